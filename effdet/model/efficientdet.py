"""The EfficientDet network: images in [0, 255] → per-level raw class logits and box regressions.

Loss, anchors' target assignment and post-processing wrap this network (training and inference live
elsewhere), so the network stays a pure function of the image.
"""
from typing import List, Sequence, Tuple

import tensorflow as tf

from effdet.config.schema import ModelConfig, default_of
from effdet.model.bifpn import BiFPNCell, Resample
from effdet.model.efficientnet import BACKBONES
from effdet.model.heads import box_head, class_head
from effdet.model.layers import ACTIVATIONS, NormFactory
from effdet.model.recompute import random_streams


def _default(key: str):
    return default_of(ModelConfig, key)


def feature_sizes(image_size: Tuple[int, int], max_level: int) -> List[Tuple[int, int]]:
    """Spatial size at levels 0..max_level for 'SAME' stride-2 downsampling."""
    sizes = [tuple(image_size)]
    for _ in range(max_level):
        height, width = sizes[-1]
        sizes.append(((height - 1) // 2 + 1, (width - 1) // 2 + 1))
    return sizes


class EfficientDet(tf.keras.Model):
    # The defaults are the model config's (ModelConfig in the schema: EfficientDet-D0's), so that a network
    # built by hand is the one the config would build.
    def __init__(self, name: str, backbone: str, num_classes: int,
                 min_level: int = _default("min_level"), max_level: int = _default("max_level"),
                 fpn_num_filters: int = _default("fpn_num_filters"),
                 fpn_cell_repeats: int = _default("fpn_cell_repeats"),
                 box_class_repeats: int = _default("box_class_repeats"),
                 fpn_weight_method: str = _default("fpn_weight_method"),
                 num_anchors: int = _default("num_scales") * len(_default("aspect_ratios")),
                 act_type: str = _default("act_type"), norm: NormFactory = None,
                 backbone_drop_connect_rate: float = _default("backbone_drop_connect_rate"),
                 head_survival_prob: float = _default("head_survival_prob"),
                 mean_rgb: Sequence[float] = _default("mean_rgb"),
                 stddev_rgb: Sequence[float] = _default("stddev_rgb")):
        super().__init__(name=name)
        norm = norm or NormFactory()
        activation = ACTIVATIONS.get(act_type, where="model.act_type")
        if not 1 <= min_level <= 5 or max_level < min(min_level, 5):
            raise ValueError(f"levels {min_level}..{max_level}: min_level must be in 1..5 and max_level ≥ 5")
        self.min_level, self.max_level = min_level, max_level
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.mean_rgb = tf.constant(mean_rgb, tf.float32)
        self.stddev_rgb = tf.constant(stddev_rgb, tf.float32)
        self.backbone = BACKBONES.get(backbone, where="model.backbone")(
            activation=act_type, norm=norm, drop_connect_rate=backbone_drop_connect_rate)
        self.extra_levels = [Resample(fpn_num_filters, norm, name=f"resample_p{level}")
                             for level in range(6, max_level + 1)]
        self.fpn_cells = FPNCells(min_level, max_level, fpn_num_filters, fpn_cell_repeats, fpn_weight_method,
                                  activation, norm, name="fpn_cells")
        head_args = dict(num_anchors=num_anchors, channels=fpn_num_filters, repeats=box_class_repeats,
                         min_level=min_level, max_level=max_level, activation=activation, norm=norm,
                         survival_prob=head_survival_prob)
        self.class_net = class_head(num_classes, **head_args)
        self.box_net = box_head(**head_args)

    def call(self, images, training=None):
        if training is not True:
            return self._forward(images, training)
        with random_streams(tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)):
            return self._forward(images, training)

    def _forward(self, images, training):
        dtype = self.compute_dtype
        x = (tf.cast(images, tf.float32) - self.mean_rgb) / self.stddev_rgb
        levels = self.backbone(tf.cast(x, dtype), training=training)
        features = levels[self.min_level - 1:5]
        for resample in self.extra_levels:
            height, width = features[-1].shape[1:3]
            features.append(resample(features[-1], ((height - 1) // 2 + 1, (width - 1) // 2 + 1),
                                     training=training))
        features = self.fpn_cells(features, training=training)
        return self.class_net(features, training=training), self.box_net(features, training=training)


class FPNCells(tf.keras.layers.Layer):
    def __init__(self, min_level, max_level, channels, repeats, fusion, activation, norm, **kwargs):
        super().__init__(**kwargs)
        self.cells = [BiFPNCell(min_level, max_level, channels, fusion, activation, norm, name=f"cell_{i}")
                      for i in range(repeats)]

    def call(self, features, training=None):
        for cell in self.cells:
            features = cell(features, training=training)
        return features
