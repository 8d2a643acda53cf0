"""What every backend does to this process's TensorFlow once its device is chosen: the thread pools, and the
report of what the worker runs with (whether oneDNN's kernels are on)."""
from dataclasses import dataclass
from typing import Any

from effdet.errors import ConfigError


@dataclass
class DeviceSetup:
    device: str
    intra_op_threads: int
    inter_op_threads: int
    onednn: bool


def apply_threads(hardware_cfg: Any, device: str) -> DeviceSetup:
    """hardware.intra_op_threads / inter_op_threads (0: TensorFlow's default, one per core)."""
    import tensorflow as tf

    threading = tf.config.threading
    _set_threads("intra_op_threads", hardware_cfg.intra_op_threads,
                 threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads)
    _set_threads("inter_op_threads", hardware_cfg.inter_op_threads,
                 threading.get_inter_op_parallelism_threads, threading.set_inter_op_parallelism_threads)
    return DeviceSetup(device, threading.get_intra_op_parallelism_threads(),
                       threading.get_inter_op_parallelism_threads(), onednn_enabled())


def onednn_enabled() -> bool:
    """Whether this TensorFlow runs its oneDNN kernels (hardware.onednn, TF_ENABLE_ONEDNN_OPTS)."""
    from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer; no public API has it

    return bool(_pywrap_util_port.IsMklEnabled())


def _set_threads(key, wanted, get, set_):
    if wanted == get() or wanted == 0 and get() == 0:
        return
    try:
        set_(wanted)
    except RuntimeError:  # TensorFlow's runtime already started (a notebook, a test): it can't change now
        raise ConfigError(f"hardware.{key}={wanted} cannot be applied: TensorFlow is already running with "
                          f"{get() or 'its default number of'} threads; set it before any TensorFlow work") from None
