"""Hardware backends (conf/hardware/*.yaml): each prepares the process's devices before any model exists."""
from effdet.hardware.registry import HARDWARE, setup_hardware
from effdet.hardware import cpu  # noqa: F401  (registers "cpu")

__all__ = ["HARDWARE", "setup_hardware", "cpu"]
