"""Hardware backends (conf/hardware/*.yaml): each prepares a worker's device before any model exists; `launch`
starts the workers, `workers` joins them once they run. Importing this package loads no TensorFlow (run.py needs
it before TensorFlow loads); `workers` does, and is imported only where TensorFlow runs."""
from effdet.hardware.registry import HARDWARE, Backend, backend_of, check_hardware, setup_hardware
from effdet.hardware import cpu, gaudi, gpu  # noqa: F401  (register "cpu", "gpu", "hls1", "hls1h")

__all__ = ["HARDWARE", "Backend", "backend_of", "check_hardware", "setup_hardware"]
