"""Activation recomputation (`trainer.recompute`): a block keeps only its inputs for the backward pass and
runs its forward pass a second time there, inside the gradient, to get the activations back.

It stays the same training as without it:
- batch norm updates its moving statistics once a step, in the forward pass: the recomputed pass skips the
  updates (`RecomputeAwareNorm`), and uses the same batch statistics, since its input is the same;
- a block's random draws (drop-connect) come from a seed of its own, made outside the recomputed function
  from one seed per step and the block's place, so the recomputed pass draws the same masks, and a network
  draws the same masks with recomputation as without (`random_streams`, `random_uniform`);
- the recomputation waits for the block's upstream gradient (a data dependency, which XLA respects where a
  control dependency would be dropped), so it runs during the backward pass, where its activations are needed,
  and not during the forward pass, where keeping them is what it is meant to avoid.
"""
import contextlib
import threading
from typing import Callable, Dict, List, Sequence

import tensorflow as tf
# The tape's stop_recording for every tape at once (tf.recompute_grad's own); TensorFlow has no public one.
from tensorflow.python.eager import record

# none: keep every activation; backbone: recompute each EfficientNet block (and the stem); all: also each BiFPN
# cell and each level's head tower.
RECOMPUTE_SCOPES = ("none", "backbone", "all")

_state = threading.local()


def recomputing() -> bool:
    """True while a block's forward pass runs again inside its gradient."""
    return getattr(_state, "recomputing", False)


@contextlib.contextmanager
def _set(**values):
    previous = {key: getattr(_state, key, None) for key in values}
    for key, value in values.items():
        setattr(_state, key, value)
    try:
        yield
    finally:
        for key, value in previous.items():
            setattr(_state, key, value)


@contextlib.contextmanager
def random_streams(seed: tf.Tensor):
    """Within a training call of the network: each block's random draws come from `seed` folded with the
    block's place in the network, whether or not it is recomputed, so that the masks do not depend on it."""
    with _set(network_seed=seed, blocks_seeded=0):
        yield


def _block_seed() -> tf.Tensor:
    network_seed = getattr(_state, "network_seed", None)
    # A block called on its own, or traced into a graph of its own (a SavedModel traces each layer's call
    # apart), where the network's seed tensor cannot be captured.
    if network_seed is None or (not tf.executing_eagerly()
                                and getattr(network_seed, "graph", None) is not tf.compat.v1.get_default_graph()):
        return tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    _state.blocks_seeded += 1
    return tf.random.experimental.stateless_fold_in(network_seed, _state.blocks_seeded)


def random_uniform(shape, dtype) -> tf.Tensor:
    """Uniform [0, 1) numbers: inside a block, from its seed (the same numbers when the block is recomputed);
    elsewhere from the global generator."""
    seeds = getattr(_state, "seeds", None)
    if seeds is None:
        return tf.random.uniform(shape, dtype=dtype)
    seed, count = seeds
    seeds[1] += 1  # each draw of a block its own stream, in the same order in both passes
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, count), dtype=dtype)


def _seeded(function: Callable[..., Sequence[tf.Tensor]], seed: tf.Tensor) -> Callable[..., List[tf.Tensor]]:
    def run(*args):
        with _set(seeds=[seed, 0]):
            return list(function(*args))

    return run


def recomputed(function: Callable[..., Sequence[tf.Tensor]], inputs: Sequence[tf.Tensor],
               seed: tf.Tensor = None) -> List[tf.Tensor]:
    """`function(*inputs)` (a list of tensors), with its activations recomputed in the backward pass; its
    random draws (`random_uniform`) come from `seed`."""
    inputs = [tf.convert_to_tensor(x) for x in inputs]
    run = _seeded(function, _block_seed() if seed is None else seed)

    @tf.custom_gradient
    def forward(*args):
        with record.stop_recording():  # nothing of the first pass is kept for the gradient
            outputs = run(*args)

        def gradient(*upstream, variables=None):
            variables = list(variables or [])
            # 0 when the upstream gradient is finite (and NaN otherwise, as the gradient would be anyway): the
            # recomputation cannot start before the upstream gradient exists.
            first = tf.reshape(upstream[0], [-1])[:1]
            wait = tf.where(tf.reduce_all(tf.math.is_finite(first)), 0.0, float("nan"))
            with _set(recomputing=True), tf.GradientTape() as tape:
                again_inputs = [x + tf.cast(wait, x.dtype) for x in args]
                tape.watch(again_inputs)
                tape.watch(variables)
                again = run(*again_inputs)
            grads = tape.gradient(again, again_inputs + variables, output_gradients=list(upstream),
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return grads[:len(args)], grads[len(args):]

        return outputs, gradient

    return list(forward(*inputs))


class Recomputable:
    """A layer mixin for a block of the network: `self.recompute = True` makes its training-mode calls of
    `forward` recomputed, once the layer is built (its first call creates the variables, which a gradient
    function must not). Either way its random draws come from its own seed."""

    recompute = False

    def maybe_recomputed(self, forward: Callable, inputs: Sequence[tf.Tensor], training) -> List[tf.Tensor]:
        if training is not True or recomputing():
            return list(forward(*inputs))
        seed = _block_seed()
        if self.recompute and self.built:
            return recomputed(forward, inputs, seed)
        return _seeded(forward, seed)(*inputs)


class RecomputeAwareNorm:
    """A batch-norm mixin: no moving-statistics update while a block is being recomputed (the forward pass made
    it). Keras's batch norm updates through these two methods, fused or not, and so does Horovod's."""

    def _assign_moving_average(self, variable, value, momentum, inputs_size):
        if recomputing():
            return variable
        return super()._assign_moving_average(variable, value, momentum, inputs_size)

    def _assign_new_value(self, variable, value):
        if recomputing():
            return variable
        return super()._assign_new_value(variable, value)


def recomputed_layers(model: tf.keras.Model, scope: str) -> Dict[str, List[tf.keras.layers.Layer]]:
    """The layers that `scope` recomputes, by part of the network."""
    if scope not in RECOMPUTE_SCOPES:
        raise ValueError(f"recompute scope {scope!r}: expected one of {', '.join(RECOMPUTE_SCOPES)}")
    parts = {}
    if scope in ("backbone", "all"):
        parts["backbone"] = [model.backbone.stem, *model.backbone.blocks]
    if scope == "all":
        parts["bifpn"] = list(model.fpn_cells.cells)
        parts["heads"] = [model.class_net, model.box_net]
    return parts


def set_recompute(model: tf.keras.Model, scope: str) -> None:
    """Turns recomputation on for the layers of `scope` ("none" turns it off everywhere)."""
    chosen = {id(layer) for layers in recomputed_layers(model, scope).values() for layer in layers}
    for layers in recomputed_layers(model, "all").values():
        for layer in layers:
            layer.recompute = id(layer) in chosen
