from typing import Any

from effdet.registry import Registry

HARDWARE = Registry("hardware backend")


def setup_hardware(hardware_cfg: Any):
    if hardware_cfg.get("malloc_tuning", False):
        from effdet.hardware.host_memory import keep_large_buffers_in_heap

        keep_large_buffers_in_heap()
    options = {k: v for k, v in hardware_cfg.items() if k not in ("name", "malloc_tuning")}
    return HARDWARE.get(hardware_cfg.name, where="hardware.name")(**options)
