"""BiFPN: extra pyramid levels by resampling, then repeated weighted bidirectional fusion cells."""
import functools
import itertools
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from effdet.model.layers import NormFactory
from effdet.model.recompute import Recomputable
from effdet.registry import Registry

FUSIONS = Registry("BiFPN fusion method")


@dataclass(frozen=True)
class FusionNode:
    level: int
    inputs: Sequence[int]  # indices into the running list of feature maps


def bifpn_nodes(min_level: int, max_level: int) -> List[FusionNode]:
    """The paper's BiFPN graph: a top-down pass, then a bottom-up pass with skip edges from the inputs."""
    ids: Dict[int, List[int]] = {level: [i] for i, level in enumerate(range(min_level, max_level + 1))}
    next_id = itertools.count(max_level - min_level + 1)
    nodes = []
    for level in range(max_level - 1, min_level - 1, -1):
        nodes.append(FusionNode(level, (ids[level][-1], ids[level + 1][-1])))
        ids[level].append(next(next_id))
    for level in range(min_level + 1, max_level + 1):
        nodes.append(FusionNode(level, tuple(ids[level]) + (ids[level - 1][-1],)))
        ids[level].append(next(next_id))
    return nodes


class Resample(tf.keras.layers.Layer):
    """Brings a feature map to another level: 1×1 conv + BN when the channels differ, then max-pool or
    nearest upsampling to the target size."""

    def __init__(self, channels: int, norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.norm_factory = norm
        self.conv = self.norm = None

    def build(self, input_shape):
        if input_shape[-1] != self.channels:
            self.conv = tf.keras.layers.Conv2D(self.channels, 1, padding="same", name="conv2d")
            self.norm = self.norm_factory("bn")
        super().build(input_shape)

    def call(self, inputs, target_size, training=None):
        x = inputs
        if self.conv is not None:
            x = self.norm(self.conv(x), training=training)
        height, width = x.shape[1], x.shape[2]
        target_height, target_width = target_size
        if height > target_height:
            stride = ((height - 1) // target_height + 1, (width - 1) // target_width + 1)
            pool = (stride[0] + 1, stride[1] + 1)
            x = tf.nn.max_pool2d(x, ksize=pool, strides=stride, padding="SAME")
        elif height < target_height:
            x = upsample_nearest(x, target_height, target_width)
        return x


def upsample_nearest(x: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Nearest-neighbour resize to (height, width), as tf.image.resize(NEAREST) computes it, but by repeating or
    gathering rows and columns: its gradient compiles under XLA on the CPU (ResizeNearestNeighborGrad does
    not). A whole factor repeats by concatenation and reshapes, ops that TFLite's XNNPACK delegate runs: a
    GATHER would split its graph at every upsampling, for the float and the int8 networks alike."""
    x = _resize_axis(x, 1, height)
    return _resize_axis(x, 2, width)


def _resize_axis(x: tf.Tensor, axis: int, size_out: int) -> tf.Tensor:
    size_in = x.shape[axis]
    if size_out == size_in:
        return x
    if size_out % size_in == 0:  # each row (column) repeated factor times: what half-pixel nearest gives then
        factor = size_out // size_in
        shape = [-1 if d is None else d for d in x.shape]
        single = tf.reshape(x, shape[:axis + 1] + [1] + shape[axis + 1:])  # not expand_dims: XNNPACK lacks it
        repeated = tf.concat([single] * factor, axis=axis + 1)
        return tf.reshape(repeated, shape[:axis] + [size_out] + shape[axis + 1:])
    source = tf.minimum(tf.cast(tf.floor((tf.range(size_out, dtype=tf.float32) + 0.5) * size_in / size_out),
                                tf.int32), size_in - 1)
    return tf.gather(x, source, axis=axis)


@dataclass(frozen=True)
class Fusion:
    """How a node fuses its same-shaped inputs: learned non-negative weights, one per input (or per
    channel), normalised by `normalize`; or a plain sum when `normalize` is None."""

    normalize: Optional[Callable] = None
    per_channel: bool = False

    def weight_shape(self, channels: int):
        return (channels,) if self.per_channel else ()

    def __call__(self, inputs: List[tf.Tensor], weights: List[tf.Variable]) -> tf.Tensor:
        if self.normalize is not None:
            normalized = self.normalize(tf.stack([tf.cast(w, inputs[0].dtype) for w in weights]))
            inputs = [normalized[i] * x for i, x in enumerate(inputs)]
        # Chained adds rather than tf.add_n: TFLite has no integer ADD_N, so an int8 export would keep it in float.
        return functools.reduce(tf.add, inputs)


def _softmax(weights):
    return tf.nn.softmax(weights, axis=0)


def _fast_normalize(weights):
    weights = tf.nn.relu(weights)
    return weights / (tf.reduce_sum(weights, axis=0) + 1e-4)


FUSIONS.register("sum")(Fusion())
FUSIONS.register("attn")(Fusion(_softmax))
FUSIONS.register("fastattn")(Fusion(_fast_normalize))
FUSIONS.register("channel_attn")(Fusion(_softmax, per_channel=True))
FUSIONS.register("channel_fastattn")(Fusion(_fast_normalize, per_channel=True))


class ConvAfterCombine(tf.keras.layers.Layer):
    """activation → separable 3×3 conv → BN, applied to every fused node."""

    def __init__(self, channels: int, activation: Callable, norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.conv = tf.keras.layers.SeparableConv2D(channels, 3, padding="same", use_bias=True, name="conv")
        self.norm = norm("bn")

    def call(self, inputs, training=None):
        return self.norm(self.conv(self.activation(inputs)), training=training)


class FusionNodeLayer(tf.keras.layers.Layer):
    def __init__(self, node: FusionNode, num_features: int, channels: int, fusion: str,
                 activation: Callable, norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.node = node
        self.channels = channels
        self.fusion = FUSIONS.get(fusion, where="model.fpn_weight_method")
        self.resamples = [Resample(channels, norm, name=f"resample_0_{i}_{num_features}") for i in node.inputs]
        self.combine = ConvAfterCombine(channels, activation, norm, name=f"op_after_combine{num_features}")

    def build(self, input_shape):
        self.fusion_weights = []
        if self.fusion.normalize is not None:
            # automl's checkpoint names: fnodeN/WSM, fnodeN/WSM_1, ...
            self.fusion_weights = [
                self.add_weight(name="WSM" if i == 0 else f"WSM_{i}",
                                shape=self.fusion.weight_shape(self.channels), initializer="ones")
                for i in range(len(self.node.inputs))
            ]
        super().build(input_shape)

    def call(self, features, target_size, training=None):
        inputs = [resample(features[i], target_size, training=training)
                  for resample, i in zip(self.resamples, self.node.inputs)]
        return self.combine(self.fusion(inputs, self.fusion_weights), training=training)


class BiFPNCell(Recomputable, tf.keras.layers.Layer):
    def __init__(self, min_level: int, max_level: int, channels: int, fusion: str, activation: Callable,
                 norm: NormFactory, **kwargs):
        super().__init__(**kwargs)
        self.min_level, self.max_level = min_level, max_level
        self.nodes = bifpn_nodes(min_level, max_level)
        num_levels = max_level - min_level + 1
        self.fnodes = [
            FusionNodeLayer(node, num_levels + i, channels, fusion, activation, norm, name=f"fnode{i}")
            for i, node in enumerate(self.nodes)
        ]

    def call(self, features: List[tf.Tensor], training=None) -> List[tf.Tensor]:
        return self.maybe_recomputed(lambda *levels: self._forward(levels, training), features, training)

    def _forward(self, features: Sequence[tf.Tensor], training) -> List[tf.Tensor]:
        features = list(features)
        sizes = {level: features[i].shape[1:3] for i, level in enumerate(range(self.min_level, self.max_level + 1))}
        for node, fnode in zip(self.nodes, self.fnodes):
            features.append(fnode(features, sizes[node.level], training=training))
        latest = {}
        for node, feature in zip(self.nodes, features[len(sizes):]):
            latest[node.level] = feature
        return [latest.get(level) for level in range(self.min_level, self.max_level + 1)]
