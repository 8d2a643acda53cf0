import logging
from typing import Any

from effdet.registry import Registry
from effdet.tensorflow_env import choose_onednn

log = logging.getLogger(__name__)

HARDWARE = Registry("hardware backend")


def setup_hardware(hardware_cfg: Any):
    problem = choose_onednn(hardware_cfg.get("onednn", True))  # run.py applied it already, before TensorFlow
    if problem:
        log.warning(problem)
    if hardware_cfg.get("malloc_tuning", False):
        from effdet.hardware.host_memory import keep_large_buffers_in_heap

        keep_large_buffers_in_heap()
    options = {k: v for k, v in hardware_cfg.items() if k not in ("name", "malloc_tuning", "onednn")}
    return HARDWARE.get(hardware_cfg.name, where="hardware.name")(**options)
