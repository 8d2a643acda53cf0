"""Habana Gaudi servers (HLS-1: 8 cards, HLS-1H: 4), as Habana's Model-References ran EfficientDet on them.

Everything but `load_habana_module()` is plain Python: the HCL config that tells Habana's communication library
where every rank is, and the binding of a host's ranks to its cards. Habana's TensorFlow bridge for TF 2.15.0
(habana-tensorflow 1.14) exists only inside Habana's containers, so it is imported when a Gaudi job starts
and never before.
"""
import importlib.util
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from effdet.artifacts import HCL_CONFIG
from effdet.errors import ConfigError
from effdet.hardware.device import DeviceSetup, apply_threads
from effdet.hardware.ranks import local_rank_from_env
from effdet.hardware.registry import HARDWARE, Backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Server:
    hcl_type: str  # HCL_TYPE in the HCL config
    cards: int
    module_ids: Tuple[int, ...]  # local rank → the card (module) it drives


SERVERS = {
    "hls1": Server("HLS1", 8, tuple(range(8))),
    # HLS-1H's cards are wired so that this order makes the ring of local ranks follow its links
    "hls1h": Server("HLS1-H", 4, (3, 0, 2, 1)),
}
MISSING_BRIDGE = (
    "hardware={name} needs Habana's TensorFlow bridge for TensorFlow 2.15.0 (the habana-tensorflow package, "
    "release 1.14, with habana-horovod), which is not importable here ({reason}). It is installed only in "
    "Habana's containers: run this job inside Habana's TensorFlow 2.15.0 image for Gaudi (SynapseAI 1.14) "
    "with this project mounted, e.g. `python run.py hardware={name}`; `hardware.dry_run=true` prints the "
    "launch without it. Elsewhere use hardware=cpu or hardware=gpu")


def server_of(name: str) -> Server:
    try:
        return SERVERS[name]
    except KeyError:
        raise ConfigError(f"hardware.name={name} is not a Gaudi server: {', '.join(SERVERS)}") from None


def module_id(name: str, local_rank: int) -> int:
    """HLS1_MODULE_ID of the worker with this local rank."""
    server = server_of(name)
    if not 0 <= local_rank < server.cards:
        raise ConfigError(f"hardware={name}: local rank {local_rank} has no card; an {server.hcl_type} server has "
                          f"{server.cards}: set hardware.num_workers to at most {server.cards}")
    return server.module_ids[local_rank]


def hcl_config(name: str, rank_ips: Sequence[str], port: int) -> Dict[str, Any]:
    """Habana's HCL config: on one server the number of cards used; on several, each rank's host IP."""
    server = server_of(name)
    config = {"HCL_PORT": port, "HCL_TYPE": server.hcl_type}
    if len(set(rank_ips)) <= 1:
        config["HCL_COUNT"] = len(rank_ips)
    else:
        config["HCL_RANKS"] = list(rank_ips)
    return config


def host_ip(host: str) -> str:
    if host in ("localhost", "127.0.0.1"):
        return "127.0.0.1"
    try:
        return socket.gethostbyname(host)
    except OSError as error:
        raise ConfigError(f"hardware.hosts: cannot resolve host '{host}' to an IP address ({error})") from None


def require_habana(name: str) -> None:
    """Stops a Gaudi job before any work when Habana's bridge is not installed."""
    try:
        found = importlib.util.find_spec("habana_frameworks.tensorflow") is not None
        reason = "no module named 'habana_frameworks.tensorflow'"
    except ModuleNotFoundError as error:
        found, reason = False, str(error)
    if not found:
        raise ConfigError(MISSING_BRIDGE.format(name=name, reason=reason))


@HARDWARE.register("hls1")
@HARDWARE.register("hls1h")
class Gaudi(Backend):
    def check(self, hardware_cfg: Any) -> None:
        """Habana's bridge, which a dry run does not need: it only prints the launch."""
        if not hardware_cfg.dry_run:
            require_habana(hardware_cfg.name)

    def elastic_problem(self, hardware_cfg: Any) -> Optional[str]:
        return ("Horovod Elastic runs its collectives on Gloo, and Gaudi cards exchange gradients through HCCL, "
                "which it does not support")

    def setup(self, hardware_cfg: Any) -> DeviceSetup:
        """Binds this worker to its card, joins the workers (Horovod), describes them to HCL, loads Habana's
        bridge."""
        require_habana(hardware_cfg.name)
        from effdet.hardware.workers import init_workers  # loads TensorFlow: not before a worker starts

        local_rank = local_rank_from_env()
        os.environ.setdefault("HLS1_MODULE_ID", str(module_id(hardware_cfg.name, local_rank)))
        workers = init_workers()
        if not hardware_cfg.hccl and not os.environ.get("HCL_CONFIG_PATH"):
            # started by an outside mpirun (an MPIJob): the ranks tell each other where they run
            rank_ips = workers.gather(host_ip(socket.gethostname()))
            handle, path = tempfile.mkstemp(prefix="hcl_config_", suffix=".json")
            with os.fdopen(handle, "w") as out:
                json.dump(hcl_config(hardware_cfg.name, rank_ips, hardware_cfg.hcl_port), out)
            os.environ["HCL_CONFIG_PATH"] = path
        from habana_frameworks.tensorflow import load_habana_module

        load_habana_module()
        setup = apply_threads(hardware_cfg, f"hpu:{os.environ['HLS1_MODULE_ID']}")
        log.info("gaudi %s: rank %d of %d on module %s, HCL config %s", hardware_cfg.name, workers.rank,
                 workers.size, os.environ["HLS1_MODULE_ID"], os.environ.get("HCL_CONFIG_PATH", "none (HCCL)"))
        return setup

    def launch_environment(self, hardware_cfg: Any, hosts: List[Tuple[str, int]], run_dir: str,
                           env: Dict[str, str], files: Dict[str, str]) -> Dict[str, str]:
        """HCL_CONFIG_PATH, and the HCL config file it names. An HCL_CONFIG_PATH already exported is used as it
        is; with the HCCL API (hardware.hccl) no file is needed."""
        server = server_of(hardware_cfg.name)
        for host, slots in hosts:
            if slots > server.cards:
                raise ConfigError(f"hardware={hardware_cfg.name}: {slots} workers on {host}, but an "
                                  f"{server.hcl_type} server has {server.cards} cards")
        if hardware_cfg.hccl or env.get("HCL_CONFIG_PATH"):
            return {}
        rank_ips = [host_ip(host) for host, slots in hosts for _ in range(slots)]  # mpirun fills hosts in order
        path = os.path.join(run_dir, HCL_CONFIG)
        files[path] = json.dumps(hcl_config(hardware_cfg.name, rank_ips, hardware_cfg.hcl_port), indent=2) + "\n"
        return {"HCL_CONFIG_PATH": path}
