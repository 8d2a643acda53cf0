"""Learning-rate schedules and optimizers, by name.

Every schedule is a pure function of the global step: a run resumed from a checkpoint (whose optimizer
`iterations` counter was restored) continues on the same curve. Schedules start with a linear warm-up
from `warmup_init` to `base_lr` over `warmup_steps`, then decay over the remaining steps.

Optimizers never clip gradients themselves (no `clipnorm` / `global_clipnorm` / `clipvalue`): the trainer
clips the global norm with `tf.clip_by_global_norm` after Horovod has averaged the gradients.
"""
import inspect
import math
from typing import Sequence

import tensorflow as tf

from effdet.config.schema import OptimizerConfig, default_of
from effdet.errors import ConfigError
from effdet.registry import Registry

REFERENCE_BATCH = 64  # the paper's learning rate 0.08 is for a global batch of 64 images

SCHEDULES = Registry("learning-rate schedule")
OPTIMIZERS = Registry("optimizer")


def scaled_learning_rate(base_lr: float, global_batch_size: int,
                         reference_batch: int = REFERENCE_BATCH) -> float:
    """The linear scaling rule: `base_lr` is for `reference_batch` images per step."""
    if global_batch_size <= 0 or reference_batch <= 0:
        raise ConfigError(f"batch sizes must be positive, got global_batch_size={global_batch_size}, "
                          f"reference_batch={reference_batch}")
    return float(base_lr) * float(global_batch_size) / float(reference_batch)


class _WarmupSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up followed by a decay that subclasses define on the post-warm-up steps."""

    def __init__(self, base_lr: float, warmup_init: float = 0.0, warmup_steps: int = 0,
                 total_steps: int = 1):
        super().__init__()
        self.base_lr = float(base_lr)
        self.warmup_init = float(warmup_init)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        name = type(self).__name__
        if self.base_lr < 0 or self.warmup_init < 0:
            raise ConfigError(f"{name}: learning rates must be >= 0, got base_lr={self.base_lr}, "
                              f"warmup_init={self.warmup_init}")
        if self.total_steps <= 0:
            raise ConfigError(f"{name}: total_steps must be positive, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ConfigError(f"{name}: warmup_steps must be in [0, total_steps={self.total_steps}), "
                              f"got {self.warmup_steps}")

    def __call__(self, step):
        with tf.name_scope(type(self).__name__):
            step = tf.cast(step, tf.float32)
            decayed = self._decay(step)
            if self.warmup_steps == 0:
                return decayed
            # Constants are folded in Python and combined by multiplication, not division, so that
            # graph rewrites cannot make tf.function's values differ from eager ones.
            slope = (self.base_lr - self.warmup_init) / self.warmup_steps
            warmup = self.warmup_init + step * slope
            return tf.where(step < float(self.warmup_steps), warmup, decayed)

    def _progress(self, step):
        """0 at the end of the warm-up, 1 at total_steps (and after)."""
        decay_steps = float(self.total_steps - self.warmup_steps)
        done = tf.clip_by_value(step - float(self.warmup_steps), 0.0, decay_steps)
        return done * (1.0 / decay_steps)

    def _decay(self, step):
        raise NotImplementedError

    def get_config(self):
        return {"base_lr": self.base_lr, "warmup_init": self.warmup_init,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


@SCHEDULES.register("cosine")
class CosineSchedule(_WarmupSchedule):
    """Half a cosine from base_lr (end of warm-up) to 0 (total_steps); 0 afterwards."""

    def _decay(self, step):
        return 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * self._progress(step)))


@SCHEDULES.register("stepwise")
class StepwiseSchedule(_WarmupSchedule):
    """base_lr after the warm-up, multiplied by factors[i] from boundaries[i] * total_steps on."""

    def __init__(self, base_lr: float, warmup_init: float = 0.0, warmup_steps: int = 0,
                 total_steps: int = 1, boundaries: Sequence[float] = (2 / 3, 8 / 9),
                 factors: Sequence[float] = (0.1, 0.01)):
        super().__init__(base_lr, warmup_init, warmup_steps, total_steps)
        self.boundaries = [float(b) for b in boundaries]
        self.factors = [float(f) for f in factors]
        if len(self.boundaries) != len(self.factors):
            raise ConfigError(f"StepwiseSchedule: {len(self.boundaries)} boundaries but "
                              f"{len(self.factors)} factors; they must pair up")
        if any(not 0.0 < b <= 1.0 for b in self.boundaries) or self.boundaries != sorted(self.boundaries):
            raise ConfigError(f"StepwiseSchedule: boundaries are increasing fractions of total_steps "
                              f"in (0, 1], got {self.boundaries}")
        self.boundary_steps = [int(round(b * self.total_steps)) for b in self.boundaries]

    def _decay(self, step):
        learning_rate = tf.constant(self.base_lr, tf.float32)
        for boundary, factor in zip(self.boundary_steps, self.factors):
            learning_rate = tf.where(step < float(boundary), learning_rate,
                                     tf.constant(self.base_lr * factor, tf.float32))
        return learning_rate

    def get_config(self):
        return {**super().get_config(), "boundaries": list(self.boundaries), "factors": list(self.factors)}


@SCHEDULES.register("polynomial")
class PolynomialSchedule(_WarmupSchedule):
    """base_lr * (1 - progress) ** power, progress going from 0 (end of warm-up) to 1 (total_steps).

    Unlike automl, which uses step / total_steps, the decay starts at the end of the warm-up so that the
    curve is continuous there."""

    def __init__(self, base_lr: float, warmup_init: float = 0.0, warmup_steps: int = 0,
                 total_steps: int = 1, power: float = 0.9):
        super().__init__(base_lr, warmup_init, warmup_steps, total_steps)
        self.power = float(power)
        if self.power <= 0:
            raise ConfigError(f"PolynomialSchedule: power must be positive, got {self.power}")

    def _decay(self, step):
        return self.base_lr * tf.pow(1.0 - self._progress(step), self.power)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


class WorkerScaledSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """`schedule` (built for the global batch of `planned_workers` workers) times the workers there are now
    over `planned_workers`: the linear scaling rule, for an elastic job whose number of workers changes. Every
    rate of the schedules above is linear in the global batch, so this is the schedule the job would have been
    built with for the new global batch, on the same steps."""

    def __init__(self, schedule, planned_workers: int):
        super().__init__()
        self.schedule, self.planned_workers = schedule, int(planned_workers)
        self.workers = tf.Variable(self.planned_workers, dtype=tf.float32, trainable=False, name="schedule_workers")

    def set_workers(self, count: int) -> None:
        self.workers.assign(float(count))

    def __call__(self, step):
        return self.schedule(step) * (self.workers * (1.0 / self.planned_workers))

    def get_config(self):
        return {"schedule": self.schedule.get_config(), "planned_workers": self.planned_workers}


@OPTIMIZERS.register("sgd")
def sgd(learning_rate, momentum: float = default_of(OptimizerConfig, "momentum"), nesterov: bool = False,
        jit_compile: bool = True):
    """SGD with (heavy-ball, or Nesterov) momentum, as automl trains EfficientDet."""
    return tf.keras.optimizers.SGD(learning_rate=learning_rate, momentum=float(momentum),
                                   nesterov=bool(nesterov), jit_compile=jit_compile)


@OPTIMIZERS.register("adam")
def adam(learning_rate, beta_1: float = default_of(OptimizerConfig, "momentum"), beta_2: float = 0.999,
         epsilon: float = 1e-7, jit_compile: bool = True):
    """Adam with Keras's defaults (epsilon 1e-7), as automl's `optimizer=adam`."""
    return tf.keras.optimizers.Adam(learning_rate=learning_rate, beta_1=float(beta_1),
                                    beta_2=float(beta_2), epsilon=float(epsilon), jit_compile=jit_compile)


_CLIPPING = ("clipnorm", "global_clipnorm", "clipvalue")


def _check_kwargs(kind: str, name: str, builder, kwargs: dict, skip: int) -> None:
    """Raises ConfigError for keyword arguments `builder` does not take, listing those it does."""
    accepted = list(inspect.signature(builder).parameters)[skip:]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ConfigError(f"{kind} '{name}' does not take {', '.join(unknown)}. "
                          f"Valid: {', '.join(accepted) or '(none)'}.")


def build_schedule(name: str, **kwargs) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """The schedule registered as `name`, e.g. build_schedule("cosine", base_lr=0.16, warmup_init=0.008,
    warmup_steps=1000, total_steps=100000)."""
    cls = SCHEDULES.get(name)
    _check_kwargs(SCHEDULES.kind, name, cls.__init__, kwargs, skip=1)
    return cls(**kwargs)


def build_optimizer(name: str, schedule, **kwargs) -> tf.keras.optimizers.Optimizer:
    """The optimizer registered as `name`, driven by `schedule` (a schedule or a float).

    Call `optimizer.build(model.trainable_variables)` before the first step so that its slot variables
    exist (and can be restored from, or written to, a checkpoint) before any gradient is applied."""
    builder = OPTIMIZERS.get(name)
    clipping = [key for key in _CLIPPING if key in kwargs]
    if clipping:
        raise ConfigError(f"optimizer '{name}': {', '.join(clipping)} is not supported; the trainer clips "
                          f"the global gradient norm itself, after gradients are averaged across workers")
    _check_kwargs(OPTIMIZERS.kind, name, builder, kwargs, skip=1)
    return builder(schedule, **kwargs)
