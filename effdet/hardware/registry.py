from typing import Any

from effdet.registry import Registry

HARDWARE = Registry("hardware backend")


def setup_hardware(hardware_cfg: Any):
    options = {k: v for k, v in hardware_cfg.items() if k != "name"}
    return HARDWARE.get(hardware_cfg.name, where="hardware.name")(**options)
