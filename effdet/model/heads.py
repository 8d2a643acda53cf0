"""Class and box prediction heads: separable convolutions shared across levels, batch norm per level."""
import math
from typing import Callable, List

import tensorflow as tf

from effdet.model.layers import DropConnect, NormFactory
from effdet.model.recompute import Recomputable


class SharedHead(Recomputable, tf.keras.layers.Layer):
    """`repeats` × (separable conv → per-level BN → activation), then a separable conv predicting
    `outputs_per_anchor × num_anchors` values at every position of every level. Recomputation, when on, is
    per level: one level's tower at a time."""

    def __init__(self, prefix: str, outputs: int, channels: int, repeats: int, min_level: int, max_level: int,
                 activation: Callable, norm: NormFactory, bias_init: float = 0.0, survival_prob: float = 1.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.min_level = min_level
        separable = dict(kernel_size=3, padding="same", use_bias=True,
                         depthwise_initializer="variance_scaling",
                         pointwise_initializer="variance_scaling")
        self.convs = [tf.keras.layers.SeparableConv2D(channels, name=f"{prefix}-{i}", **separable)
                      for i in range(repeats)]
        self.norms = [[norm(f"{prefix}-{i}-bn-{level}") for level in range(min_level, max_level + 1)]
                      for i in range(repeats)]
        self.drop_connect = DropConnect(survival_prob) if survival_prob < 1.0 else None
        self.predict = tf.keras.layers.SeparableConv2D(
            outputs, bias_initializer=tf.constant_initializer(bias_init), name=f"{prefix}-predict", **separable)

    def call(self, features: List[tf.Tensor], training=None) -> List[tf.Tensor]:
        return [self.maybe_recomputed(lambda x, level=level_index: [self._tower(level, x, training)], [x],
                                      training)[0]
                for level_index, x in enumerate(features)]

    def _tower(self, level_index: int, x: tf.Tensor, training) -> tf.Tensor:
        for i, conv in enumerate(self.convs):
            residual = x
            x = self.activation(self.norms[i][level_index](conv(x), training=training))
            if i > 0 and self.drop_connect is not None:
                x = self.drop_connect(x, training=training) + residual
        return self.predict(x)


def class_head(num_classes: int, num_anchors: int, **kwargs) -> SharedHead:
    # Prior probability 0.01 for every class, so focal loss starts stable (Lin et al., 2017).
    prior = -math.log((1 - 0.01) / 0.01)
    return SharedHead("class", num_classes * num_anchors, bias_init=prior, name="class_net", **kwargs)


def box_head(num_anchors: int, **kwargs) -> SharedHead:
    return SharedHead("box", 4 * num_anchors, name="box_net", **kwargs)
