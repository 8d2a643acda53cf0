"""An exponential moving average of model weights, as automl keeps it (decay 0.9998 with num_updates): training
updates it, evaluation, inference and export restore it."""
import contextlib
from typing import Iterator, List, Optional, Sequence

import tensorflow as tf

from effdet.config.schema import TrainerConfig, default_of
from effdet.errors import ConfigError


def _base_name(variable) -> str:
    name = getattr(variable, "name", None) or "variable"
    return name[:-2] if name.endswith(":0") else name


def _shadow(variable) -> tf.Variable:
    # A scope ending in "/" is absolute: the name does not depend on the scope the EMA is built in.
    with tf.name_scope(_base_name(variable) + "/"):
        return tf.Variable(tf.cast(variable.read_value(), tf.float32), trainable=False,
                           name="ExponentialMovingAverage")


class ExponentialMovingAverage(tf.Module):
    """Float32 shadow copies of `variables`, updated with shadow -= (1 - d) * (shadow - value).

    The caller passes the trainable variables and the batch-norm moving statistics. Only the shadow
    variables are tracked (`tf.train.Checkpoint(ema=ema)` saves them, not a second copy of the model);
    the step that drives the warm-up is the caller's (the optimizer's `iterations`), so a resumed run
    continues with the same decay.
    """

    _TF_MODULE_IGNORED_PROPERTIES = tf.Module._TF_MODULE_IGNORED_PROPERTIES.union(("_sources", "_backup"))

    def __init__(self, variables: Sequence[tf.Variable], decay: float = default_of(TrainerConfig, "ema_decay"),
                 warmup: bool = True,
                 name: Optional[str] = "ema"):
        super().__init__(name=name)
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        sources = list(variables)
        for variable in sources:
            if not variable.dtype.is_floating:
                raise TypeError(f"EMA of non-floating variable {_base_name(variable)} "
                                f"({variable.dtype.name})")
        self._sources = self._no_dependency(sources)
        self._backup = None
        with tf.init_scope():  # variables, even when the EMA is built inside a tf.function
            self.shadow_variables: List[tf.Variable] = [_shadow(variable) for variable in sources]

    @property
    def source_variables(self) -> List[tf.Variable]:
        return list(self._sources)

    def decay_at(self, step) -> tf.Tensor:
        """The decay used by the update at `step`: min(decay, (1 + step) / (10 + step)) with warm-up."""
        decay = tf.constant(self.decay, tf.float32)
        if not self.warmup:
            return decay
        step = tf.cast(step, tf.float32)
        return tf.minimum(decay, (1.0 + step) / (10.0 + step))

    def update(self, step) -> tf.Tensor:
        """Moves every shadow towards its variable's current value; returns the decay used."""
        decay = self.decay_at(step)
        for shadow, variable in zip(self.shadow_variables, self._sources):
            value = tf.cast(variable.read_value(), tf.float32)
            shadow.assign_sub((1.0 - decay) * (shadow - value))
        return decay

    def reset(self) -> None:
        """Shadows take the current values (after loading pretrained weights, before the first step)."""
        for shadow, variable in zip(self.shadow_variables, self.source_variables):
            shadow.assign(tf.cast(variable, tf.float32))

    def copy_to(self, variables: Optional[Sequence[tf.Variable]] = None) -> None:
        """Writes the averages into `variables` (by default the averaged variables themselves)."""
        targets = self._sources if variables is None else list(variables)
        if len(targets) != len(self.shadow_variables):
            raise ValueError(f"copy_to: {len(targets)} variables for {len(self.shadow_variables)} averages")
        for shadow, target in zip(self.shadow_variables, targets):
            if tuple(target.shape) != tuple(shadow.shape):
                raise ValueError(f"copy_to: {_base_name(target)} has shape {tuple(target.shape)}, its "
                                 f"average {tuple(shadow.shape)}")
            target.assign(tf.cast(shadow, target.dtype))

    @contextlib.contextmanager
    def swap(self) -> Iterator[None]:
        """Within the block, the averaged variables hold their averages; on exit (even on an exception)
        they get back their training values, bit for bit. Meant for eager code such as an evaluation."""
        if self._backup is not None:
            raise RuntimeError("ExponentialMovingAverage.swap() is already active")
        self._backup = self._no_dependency([tf.identity(variable.read_value()) for variable in self._sources])
        try:
            self.copy_to()
            yield
        finally:
            for variable, value in zip(self._sources, self._backup):
                variable.assign(value)
            self._backup = None


def build_ema(model: tf.keras.Model, decay: float) -> ExponentialMovingAverage:
    """Averages the trainable weights and the batch-norm statistics, as automl's EMA checkpoints do."""
    moving = [v for v in model.non_trainable_variables if "moving_" in v.name]
    return ExponentialMovingAverage(model.trainable_variables + moving, decay=decay)
