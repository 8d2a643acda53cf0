"""The CPU: GPUs are hidden so that a CPU job never grabs a GPU's memory."""
import logging
from typing import Any

from effdet.hardware.device import DeviceSetup, apply_threads
from effdet.hardware.registry import HARDWARE, Backend

log = logging.getLogger(__name__)


@HARDWARE.register("cpu")
class Cpu(Backend):
    def setup(self, hardware_cfg: Any) -> DeviceSetup:
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.set_visible_devices([], "GPU")
        setup = apply_threads(hardware_cfg, "cpu")
        log.info("cpu: %s intra-op threads, %s inter-op threads (0: one per core), oneDNN kernels %s",
                 setup.intra_op_threads, setup.inter_op_threads, "on" if setup.onednn else "off")
        return setup
