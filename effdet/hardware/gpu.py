"""One GPU per worker: the worker with local rank r on a host sees only that host's GPU r, and takes its memory
as it needs it (not all of it at start, so that a data pipeline or a second job can share the card)."""
import logging
from typing import Any, List

from effdet.errors import ConfigError
from effdet.hardware.device import DeviceSetup, apply_threads
from effdet.hardware.ranks import local_rank_from_env
from effdet.hardware.registry import HARDWARE, Backend

log = logging.getLogger(__name__)


def gpu_for(local_rank: int, gpus: List[Any]) -> Any:
    """The GPU of the worker with this local rank."""
    if not gpus:
        raise ConfigError("hardware=gpu: TensorFlow sees no GPU on this machine. Is tensorflow-cpu installed "
                          "(`EFFDET_DEVICE=gpu make venv` installs tensorflow[and-cuda]), or is the driver missing "
                          "(nvidia-smi)? On a machine without a GPU use hardware=cpu")
    if local_rank >= len(gpus):
        raise ConfigError(f"hardware=gpu: the worker with local rank {local_rank} has no GPU of its own: this host "
                          f"has {len(gpus)}. Set hardware.num_workers (or the hosts' slots) to at most {len(gpus)}")
    return gpus[local_rank]


@HARDWARE.register("gpu")
class Gpu(Backend):
    def setup(self, hardware_cfg: Any, config: Any = None) -> DeviceSetup:
        """`config` is tf.config (a stand-in in tests: no GPU here)."""
        if config is None:
            import tensorflow as tf

            config = tf.config
        local_rank = local_rank_from_env()
        gpu = gpu_for(local_rank, config.list_physical_devices("GPU"))
        config.set_visible_devices([gpu], "GPU")
        config.experimental.set_memory_growth(gpu, True)
        setup = apply_threads(hardware_cfg, f"gpu:{local_rank}")
        log.info("gpu: local rank %d on %s (memory growth on)", local_rank, getattr(gpu, "name", gpu))
        return setup
