import logging
from dataclasses import dataclass
from typing import Any

from effdet.errors import ConfigError
from effdet.hardware.registry import HARDWARE

log = logging.getLogger(__name__)


@dataclass
class DeviceSetup:
    device: str
    intra_op_threads: int
    inter_op_threads: int
    onednn: bool


@HARDWARE.register("cpu")
def setup_cpu(hardware_cfg: Any) -> DeviceSetup:
    """Runs on the CPU only: GPUs are hidden so that a CPU job never grabs a GPU's memory."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        tf.config.set_visible_devices([], "GPU")
    setup = apply_threads(hardware_cfg, "cpu")
    log.info("cpu: %s intra-op threads, %s inter-op threads (0: one per core), oneDNN kernels %s",
             setup.intra_op_threads, setup.inter_op_threads, "on" if setup.onednn else "off")
    return setup


def apply_threads(hardware_cfg: Any, device: str) -> DeviceSetup:
    """hardware.intra_op_threads / inter_op_threads (0: TensorFlow's default, one per core)."""
    import tensorflow as tf

    threading = tf.config.threading
    _set_threads("intra_op_threads", hardware_cfg.get("intra_op_threads", 0),
                 threading.get_intra_op_parallelism_threads, threading.set_intra_op_parallelism_threads)
    _set_threads("inter_op_threads", hardware_cfg.get("inter_op_threads", 0),
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
