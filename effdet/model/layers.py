"""Small building blocks shared by the backbone, the BiFPN and the heads."""
import tensorflow as tf

from effdet.config.schema import BatchNormConfig, default_of
from effdet.hardware.ranks import launched_as_elastic
from effdet.model.recompute import RecomputeAwareNorm, random_uniform
from effdet.registry import Registry

ACTIVATIONS = Registry("activation")
NORMALIZATIONS = Registry("batch norm kind")


@ACTIVATIONS.register("swish")
@tf.custom_gradient
def swish(x):
    """x·σ(x), computed by tf.nn.silu (which oneDNN fuses, and which FLOP counts match automl's with). Its
    gradient also computes the gradient of silu's β, a full-size pass of five more ops for a constant; this
    one recomputes σ(x) (keeping only x, as silu does) and stops there."""
    def gradient(upstream):
        sigmoid = tf.sigmoid(x)
        return upstream * (sigmoid * (1.0 + x * (1.0 - sigmoid)))

    return tf.nn.silu(x), gradient


ACTIVATIONS.register("relu")(tf.nn.relu)
ACTIVATIONS.register("relu6")(tf.nn.relu6)


class BatchNormalization(RecomputeAwareNorm, tf.keras.layers.BatchNormalization):
    """Keras's batch norm, which leaves its moving statistics alone while a block is recomputed."""


@NORMALIZATIONS.register("batch_norm")
def keras_batch_norm(name: str, momentum: float, epsilon: float, **kwargs):
    return BatchNormalization(momentum=momentum, epsilon=epsilon, name=name, **kwargs)


_sync_batch_norm = None  # the class, made on first use: Horovod is imported only when a model asks for it


class GroupMoments:
    """Synchronized batch norm's moments: mean and variance over the global batch, all-reduced as the average of
    each worker's mean and mean of squares (the workers' batches are equal). Horovod's layer divides by the
    number of workers it had when the step was traced; this averages over those there are when it runs, which
    in an elastic job (hardware.elastic) changes under a step traced once."""

    def _moments(self, inputs, reduction_axes, keep_dims, **kwargs):
        import horovod.tensorflow as hvd

        mean, variance = tf.keras.layers.BatchNormalization._moments(self, inputs, reduction_axes,
                                                                     keep_dims=keep_dims, **kwargs)
        if hvd.size() == 1 and not launched_as_elastic():
            return mean, variance
        group = hvd.allreduce(tf.stack([mean, variance + tf.square(mean)]), op=hvd.Average)
        group_mean, group_mean_of_square = tf.unstack(group)
        return group_mean, group_mean_of_square - tf.square(group_mean)


@NORMALIZATIONS.register("sync_batch_norm")
def sync_batch_norm(name: str, momentum: float, epsilon: float, **kwargs):
    """Batch norm whose moments are all-reduced over the Horovod workers (the global batch)."""
    try:
        import horovod.tensorflow as hvd
    except ImportError as error:  # only reachable where Horovod is not installed
        raise ImportError(
            "model.batch_norm=sync_batch_norm needs Horovod (pip install horovod==0.28.1, see README); "
            f"importing it failed: {error}"
        ) from error
    global _sync_batch_norm
    if _sync_batch_norm is None:
        _sync_batch_norm = type("SyncBatchNormalization",
                                (GroupMoments, RecomputeAwareNorm, hvd.SyncBatchNormalization),
                                {"__doc__": "Horovod's synchronized batch norm, aware of recomputation and of a "
                                            "number of workers that changes."})
    return _sync_batch_norm(momentum=momentum, epsilon=epsilon, name=name, **kwargs)


class NormFactory:
    """Makes batch-norm layers of one configured kind, momentum and epsilon by name."""

    def __init__(self, kind: str = default_of(BatchNormConfig, "kind"),
                 momentum: float = default_of(BatchNormConfig, "momentum"),
                 epsilon: float = default_of(BatchNormConfig, "epsilon")):
        self._make = NORMALIZATIONS.get(kind, where="model.batch_norm")
        self.momentum = momentum
        self.epsilon = epsilon

    def __call__(self, name: str) -> tf.keras.layers.Layer:
        return self._make(name=name, momentum=self.momentum, epsilon=self.epsilon)


def conv_kernel_initializer(shape, dtype=None, partition_info=None):
    """He-normal on fan-out, as EfficientNet initialises its convolutions."""
    del partition_info
    kernel_height, kernel_width, _, out_filters = shape
    fan_out = int(kernel_height * kernel_width * out_filters)
    return tf.random.normal(shape, mean=0.0, stddev=(2.0 / fan_out) ** 0.5, dtype=dtype)


class DropConnect(tf.keras.layers.Layer):
    """Stochastic depth: drops a residual branch per example during training."""

    def __init__(self, survival_prob: float, **kwargs):
        super().__init__(**kwargs)
        self.survival_prob = survival_prob

    def call(self, inputs, training=None):
        if not training or self.survival_prob >= 1.0:
            return inputs
        batch = tf.shape(inputs)[0]
        # the same mask when the block is recomputed (effdet/model/recompute.py)
        keep = tf.floor(self.survival_prob + random_uniform([batch, 1, 1, 1], dtype=inputs.dtype))
        return inputs / self.survival_prob * keep
