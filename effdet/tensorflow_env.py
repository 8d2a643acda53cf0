"""Settings that TensorFlow reads from the environment once, when it loads.

They must be in `os.environ` before the first `import tensorflow` of the process (run.py applies them
before anything else), and workers started later inherit them. This module imports no TensorFlow, and
lives outside `effdet.hardware`, whose package import loads TensorFlow.
"""
import logging
import os
import sys
from typing import Optional

log = logging.getLogger(__name__)

ONEDNN = "TF_ENABLE_ONEDNN_OPTS"


def choose_onednn(enabled: bool) -> Optional[str]:
    """Turns TensorFlow's oneDNN CPU kernels on or off (`hardware.onednn`).

    TensorFlow 2.15 turns them on by itself only on CPUs with AVX-512 or AMX; on an AVX2 CPU they train
    EfficientDet-D0 faster than its default Eigen kernels (docs/benchmarks.md). A value the user
    already exported wins. Returns why nothing could be applied, or None.
    """
    wanted = "1" if enabled else "0"
    current = os.environ.get(ONEDNN)
    if current is not None:
        if current != wanted:
            log.info("%s=%s from the environment overrides hardware.onednn=%s", ONEDNN, current, enabled)
        return None
    if "tensorflow" in sys.modules:  # too late: TensorFlow has read the environment already
        return (f"hardware.onednn={str(enabled).lower()} was not applied: TensorFlow was imported before it; "
                f"export {ONEDNN}={wanted} before starting Python instead")
    os.environ[ONEDNN] = wanted
    return None
