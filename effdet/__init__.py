"""effdet: EfficientDet detectors from composable Hydra configs.

Kept free of imports on purpose: `run.py` checks the command line before TensorFlow loads. Each package
(`effdet.model`, `effdet.modes`, `effdet.hardware`) imports all of its registering modules itself.
"""
__version__ = "0.1.0"
