import logging
from typing import Any

from effdet.hardware.horovod_tuning import apply_horovod_variables, describe_cycle
from effdet.hardware.ranks import launched_as_worker
from effdet.registry import Registry
from effdet.tensorflow_env import choose_onednn

log = logging.getLogger(__name__)

HARDWARE = Registry("hardware backend")


def check_hardware(hardware_cfg: Any) -> None:
    """What must hold before any work, launching included: a Gaudi job needs Habana's bridge (a dry run does not,
    it only prints)."""
    from effdet.hardware.gaudi import SERVERS, require_habana

    if hardware_cfg.name in SERVERS and not hardware_cfg.dry_run:
        require_habana(hardware_cfg.name)


def setup_hardware(hardware_cfg: Any):
    """Prepares this process's device (one worker's) before any model exists."""
    problem = choose_onednn(hardware_cfg.get("onednn", True))  # run.py applied it already, before TensorFlow
    if problem:
        log.warning(problem)
    if hardware_cfg.get("malloc_tuning", False):
        from effdet.hardware.host_memory import keep_large_buffers_in_heap

        keep_large_buffers_in_heap()
    if launched_as_worker():  # Horovod starts in this process soon after, and reads its variables only then
        apply_horovod_variables(hardware_cfg)
        log.info("Horovod's cycle: %s", describe_cycle())
    return HARDWARE.get(hardware_cfg.name, where="hardware.name")(hardware_cfg)
