"""The hardware backends (conf/hardware/<name>.yaml ↔ HARDWARE[name]) and what every job asks of its backend.

This module names no backend: each registers itself, and effdet/hardware/__init__.py imports them all, so the
launcher and run.py ask the registered backend instead of knowing which devices exist.
"""
import abc
import logging
from typing import Any, Dict, List, Optional, Tuple

from effdet.hardware.device import DeviceSetup
from effdet.hardware.horovod_tuning import apply_horovod_variables, describe_cycle
from effdet.hardware.host_memory import keep_large_buffers_in_heap
from effdet.hardware.ranks import launched_as_worker
from effdet.registry import Registry
from effdet.tensorflow_env import choose_onednn

log = logging.getLogger(__name__)

HARDWARE = Registry("hardware backend")


class Backend(abc.ABC):
    """A kind of device. Registered as a class (`@HARDWARE.register(name)`), built without arguments; every
    method reads the job's `hardware` config, so one class may serve several names (the Gaudi servers)."""

    def check(self, hardware_cfg: Any) -> None:
        """Raises ConfigError when something this backend needs is missing; runs before any work, launching
        included. Nothing to check by default."""

    @abc.abstractmethod
    def setup(self, hardware_cfg: Any) -> DeviceSetup:
        """Prepares this worker's device, before any model exists."""

    def elastic_problem(self, hardware_cfg: Any) -> Optional[str]:
        """Why an elastic job (hardware.elastic) cannot run on this device, or None when it can."""
        return None

    def launch_environment(self, hardware_cfg: Any, hosts: List[Tuple[str, int]], run_dir: str,
                           env: Dict[str, str], files: Dict[str, str]) -> Dict[str, str]:
        """The variables a launch of `hosts` (name, workers) sets for its workers, given the launching process's
        `env`; adds the files it needs written first to `files` (path → content). None by default."""
        return {}


def backend_of(hardware_cfg: Any) -> Backend:
    return HARDWARE.get(hardware_cfg.name, where="hardware.name")()


def check_hardware(hardware_cfg: Any) -> None:
    """What must hold before any work, launching included."""
    backend_of(hardware_cfg).check(hardware_cfg)


def setup_hardware(hardware_cfg: Any) -> DeviceSetup:
    """Prepares this process's device (one worker's) before any model exists."""
    problem = choose_onednn(hardware_cfg.onednn)  # run.py applied it already, before TensorFlow
    if problem:
        log.warning(problem)
    if hardware_cfg.malloc_tuning:
        keep_large_buffers_in_heap()  # once per process; later calls change nothing
    if launched_as_worker():  # Horovod starts in this process soon after, and reads its variables only then
        apply_horovod_variables(hardware_cfg)
        log.info("Horovod's cycle: %s", describe_cycle())
    return backend_of(hardware_cfg).setup(hardware_cfg)
