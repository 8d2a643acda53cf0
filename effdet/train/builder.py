"""Config → the pieces of a training run: precision, optimizer with its schedule, EMA, loss."""
import math
from typing import Any, Optional, Tuple

import tensorflow as tf

from effdet.errors import ConfigError
from effdet.train.losses import DetectionLoss
from effdet.train.optim import WorkerScaledSchedule, build_optimizer, build_schedule, scaled_learning_rate

# trainer.precision and hardware.precision → Keras dtype policy (the schema's choices for both)
PRECISION_POLICIES = {"fp32": "float32", "mixed_float16": "mixed_float16", "mixed_bfloat16": "mixed_bfloat16"}


def set_precision(precision: str) -> bool:
    """Sets the Keras dtype policy before any layer exists; returns whether the loss must be scaled."""
    if precision not in PRECISION_POLICIES:
        raise ConfigError(f"trainer.precision={precision}: choose one of {', '.join(PRECISION_POLICIES)}")
    tf.keras.mixed_precision.set_global_policy(PRECISION_POLICIES[precision])
    return precision == "mixed_float16"


def steps_of(trainer_cfg: Any, num_examples: int, global_batch: int) -> Tuple[int, int]:
    """(steps per epoch, total steps)."""
    steps_per_epoch = max(1, num_examples // global_batch)
    total = trainer_cfg.total_steps or trainer_cfg.num_epochs * steps_per_epoch
    return steps_per_epoch, int(total)


def build_optimization(optimizer_cfg: Any, global_batch: int, steps_per_epoch: int, total_steps: int,
                       loss_scaling: bool, elastic_workers: Optional[int] = None):
    """The learning-rate schedule (the paper's: base × global batch / 64, warm-up, decay) and the optimizer.
    `elastic_workers`: the number of workers `global_batch` is for, in a job whose number changes; the rate then
    follows the number there are (WorkerScaledSchedule.set_workers)."""
    base_lr = scaled_learning_rate(optimizer_cfg.lr, global_batch)
    warmup_init = scaled_learning_rate(optimizer_cfg.lr_warmup_init, global_batch)
    warmup_steps = min(int(math.ceil(optimizer_cfg.lr_warmup_epoch * steps_per_epoch)), total_steps - 1)
    schedule = build_schedule(optimizer_cfg.schedule, base_lr=base_lr, warmup_init=min(warmup_init, base_lr),
                              warmup_steps=max(warmup_steps, 0), total_steps=total_steps)
    if elastic_workers is not None:
        schedule = WorkerScaledSchedule(schedule, elastic_workers)
    options = {"momentum": optimizer_cfg.momentum} if optimizer_cfg.name == "sgd" else \
        {"beta_1": optimizer_cfg.momentum}
    optimizer = build_optimizer(optimizer_cfg.name, schedule, jit_compile=False, **options)
    if loss_scaling:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return schedule, optimizer


def build_loss(loss_cfg: Any, model_cfg: Any, num_classes: int, anchors, workers) -> DetectionLoss:
    return DetectionLoss(num_classes, model_cfg.min_level, model_cfg.max_level, anchors=anchors,
                         alpha=loss_cfg.alpha, gamma=loss_cfg.gamma, label_smoothing=loss_cfg.label_smoothing,
                         delta=loss_cfg.delta, box_loss_weight=loss_cfg.box_loss_weight,
                         iou_loss_type=loss_cfg.iou_loss_type, iou_loss_weight=loss_cfg.iou_loss_weight,
                         workers=workers, jit_compile=loss_cfg.jit_compile)
