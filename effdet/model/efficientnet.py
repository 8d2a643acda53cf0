"""EfficientNet B0–B7 and EfficientNet-lite0–4 as feature extractors.

Layer names follow Google automl's checkpoints (`efficientnet-b0/blocks_3/tpu_batch_normalization_1/...`),
so that a variable's name is its checkpoint key.
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List

import tensorflow as tf

from effdet.config.schema import ModelConfig, default_of
from effdet.model.layers import ACTIVATIONS, DropConnect, NormFactory, conv_kernel_initializer
from effdet.model.recompute import Recomputable
from effdet.registry import Registry

BACKBONES = Registry("backbone")


@dataclass(frozen=True)
class BlockGroup:
    """One stage of MBConv blocks, before width/depth scaling."""

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    input_filters: int
    output_filters: int
    se_ratio: float = 0.25


# The EfficientNet-B0 stages (Tan & Le, 2019, Table 1).
B0_STAGES = (
    BlockGroup(1, 3, 1, 1, 32, 16),
    BlockGroup(2, 3, 2, 6, 16, 24),
    BlockGroup(2, 5, 2, 6, 24, 40),
    BlockGroup(3, 3, 2, 6, 40, 80),
    BlockGroup(3, 5, 1, 6, 80, 112),
    BlockGroup(4, 5, 2, 6, 112, 192),
    BlockGroup(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Scaling:
    width: float
    depth: float
    lite: bool = False  # lite: ReLU6, no squeeze-excite, stem and first/last stage not scaled


SCALINGS: Dict[str, Scaling] = {
    "efficientnet-b0": Scaling(1.0, 1.0),
    "efficientnet-b1": Scaling(1.0, 1.1),
    "efficientnet-b2": Scaling(1.1, 1.2),
    "efficientnet-b3": Scaling(1.2, 1.4),
    "efficientnet-b4": Scaling(1.4, 1.8),
    "efficientnet-b5": Scaling(1.6, 2.2),
    "efficientnet-b6": Scaling(1.8, 2.6),
    "efficientnet-b7": Scaling(2.0, 3.1),
    "efficientnet-lite0": Scaling(1.0, 1.0, lite=True),
    "efficientnet-lite1": Scaling(1.0, 1.1, lite=True),
    "efficientnet-lite2": Scaling(1.1, 1.2, lite=True),
    "efficientnet-lite3": Scaling(1.2, 1.4, lite=True),
    "efficientnet-lite4": Scaling(1.4, 1.8, lite=True),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, rounded to a multiple of `divisor`, never down by more than 10 %."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class SqueezeExcite(tf.keras.layers.Layer):
    def __init__(self, reduced_filters: int, filters: int, activation: Callable, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        common = dict(kernel_size=1, padding="same", use_bias=True, kernel_initializer=conv_kernel_initializer)
        self.reduce = tf.keras.layers.Conv2D(reduced_filters, name="conv2d", **common)
        self.expand = tf.keras.layers.Conv2D(filters, name="conv2d_1", **common)

    def call(self, inputs):
        squeezed = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
        return inputs * tf.sigmoid(self.expand(self.activation(self.reduce(squeezed))))


class MBConvBlock(Recomputable, tf.keras.layers.Layer):
    """Inverted-residual block: expand (1×1) → depthwise → squeeze-excite → project (1×1)."""

    def __init__(self, input_filters, output_filters, kernel_size, stride, expand_ratio, se_ratio,
                 survival_prob, activation, norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        # automl names convs and norms by creation order: conv2d, conv2d_1, tpu_batch_normalization_1, ...
        conv_names = iter(["conv2d", "conv2d_1"])
        norm_names = iter(["tpu_batch_normalization", "tpu_batch_normalization_1", "tpu_batch_normalization_2"])
        filters = input_filters * expand_ratio
        self.expand = self.expand_norm = None
        if expand_ratio != 1:
            self.expand = tf.keras.layers.Conv2D(
                filters, 1, padding="same", use_bias=False, kernel_initializer=conv_kernel_initializer,
                name=next(conv_names))
            self.expand_norm = norm(next(norm_names))
        self.depthwise = tf.keras.layers.DepthwiseConv2D(
            kernel_size, strides=stride, padding="same", use_bias=False,
            depthwise_initializer=conv_kernel_initializer, name="depthwise_conv2d")
        self.depthwise_norm = norm(next(norm_names))
        self.se = None
        if se_ratio:
            self.se = SqueezeExcite(max(1, int(input_filters * se_ratio)), filters, activation, name="se")
        self.project = tf.keras.layers.Conv2D(
            output_filters, 1, padding="same", use_bias=False, kernel_initializer=conv_kernel_initializer,
            name=next(conv_names))
        self.project_norm = norm(next(norm_names))
        self.residual = stride == 1 and input_filters == output_filters
        self.drop_connect = DropConnect(survival_prob) if self.residual and survival_prob < 1 else None

    def call(self, inputs, training=None):
        return self.maybe_recomputed(lambda x: [self._forward(x, training)], [inputs], training)[0]

    def _forward(self, inputs, training):
        x = inputs
        if self.expand is not None:
            x = self.activation(self.expand_norm(self.expand(x), training=training))
        x = self.activation(self.depthwise_norm(self.depthwise(x), training=training))
        if self.se is not None:
            x = self.se(x)
        x = self.project_norm(self.project(x), training=training)
        if self.residual:
            if self.drop_connect is not None:
                x = self.drop_connect(x, training=training)
            x = x + inputs
        return x


class Stem(Recomputable, tf.keras.layers.Layer):
    def __init__(self, filters: int, activation, norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.conv = tf.keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                           kernel_initializer=conv_kernel_initializer, name="conv2d")
        self.norm = norm("tpu_batch_normalization")

    def call(self, inputs, training=None):
        return self.maybe_recomputed(lambda x: [self._forward(x, training)], [inputs], training)[0]

    def _forward(self, inputs, training):
        return self.activation(self.norm(self.conv(inputs), training=training))


class EfficientNet(tf.keras.layers.Layer):
    """Returns the features at strides 2, 4, 8, 16, 32 (levels 1..5): the last block output of each stride."""

    def __init__(self, model_name: str, scaling: Scaling, activation: str = default_of(ModelConfig, "act_type"),
                 norm: NormFactory = None,
                 drop_connect_rate: float = default_of(ModelConfig, "backbone_drop_connect_rate"), **kwargs):
        super().__init__(name=model_name, **kwargs)
        norm = norm or NormFactory()
        act = ACTIVATIONS.get("relu6" if scaling.lite else activation)
        stem_filters = 32 if scaling.lite else round_filters(32, scaling.width)
        self.stem = Stem(stem_filters, act, norm, name="stem")
        plan = []  # (group args, stride of this block, input filters)
        for index, group in enumerate(B0_STAGES):
            fixed = scaling.lite and index in (0, len(B0_STAGES) - 1)
            repeats = group.repeats if fixed else round_repeats(group.repeats, scaling.depth)
            input_filters = round_filters(group.input_filters, scaling.width)
            output_filters = round_filters(group.output_filters, scaling.width)
            for repeat in range(repeats):
                plan.append((group, group.stride if repeat == 0 else 1,
                             input_filters if repeat == 0 else output_filters, output_filters))
        self.blocks: List[MBConvBlock] = []
        for index, (group, stride, input_filters, output_filters) in enumerate(plan):
            survival_prob = 1.0 - drop_connect_rate * index / len(plan)
            self.blocks.append(MBConvBlock(
                input_filters, output_filters, group.kernel_size, stride, group.expand_ratio,
                0.0 if scaling.lite else group.se_ratio, survival_prob, act, norm, name=f"blocks_{index}"))
        # A block ends a level when the next block downsamples (or it is the last block).
        strides = [stride for _, stride, _, _ in plan[1:]] + [2]
        self._level_ends = [i for i, next_stride in enumerate(strides) if next_stride == 2]
        self.level_channels = [plan[i][3] for i in self._level_ends]

    def call(self, inputs, training=None):
        x = self.stem(inputs, training=training)
        features = []
        for index, block in enumerate(self.blocks):
            x = block(x, training=training)
            if index in self._level_ends:
                features.append(x)
        return features


def _register(name: str, scaling: Scaling):
    @BACKBONES.register(name)
    def build(activation: str = default_of(ModelConfig, "act_type"), norm: NormFactory = None,
              drop_connect_rate: float = default_of(ModelConfig, "backbone_drop_connect_rate")):
        return EfficientNet(name, scaling, activation=activation, norm=norm, drop_connect_rate=drop_connect_rate)

    return build


for _name, _scaling in SCALINGS.items():
    _register(_name, _scaling)
