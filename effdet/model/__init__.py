from effdet.model.efficientdet import EfficientDet, feature_sizes
from effdet.model.efficientnet import BACKBONES
from effdet.model.bifpn import FUSIONS
from effdet.model.layers import ACTIVATIONS, NORMALIZATIONS, NormFactory

__all__ = ["EfficientDet", "feature_sizes", "BACKBONES", "FUSIONS", "ACTIVATIONS", "NORMALIZATIONS", "NormFactory"]
