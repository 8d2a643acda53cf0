"""A trained detector for evaluation, inference and export: the network of the config with a checkpoint's weights
(the moving average of a training run's weights, by default)."""
import logging
import re
from typing import Any, NamedTuple, Optional

import tensorflow as tf

from effdet.errors import CheckpointError
from effdet.model.builder import build_model
from effdet.model.checkpoint import OBJECT_GRAPH_KEY, checkpoint_of, load_weights
from effdet.model.ema import build_ema

log = logging.getLogger(__name__)


class Restored(NamedTuple):
    model: tf.keras.Model
    prefix: str  # the checkpoint the weights came from
    step: int  # its training step


def build_detector(cfg: Any, ckpt: str, use_ema: bool, key: Optional[str] = None) -> Restored:
    """cfg.model's network for cfg.data.num_classes classes, with the weights of `ckpt`: a checkpoint prefix, a
    directory of checkpoints or a run dir (its latest checkpoint). An error names the config `key` of `ckpt`."""
    prefix = checkpoint_of(ckpt, key=key)
    model = build_model(cfg.model, cfg.data.num_classes)
    return Restored(model, prefix, restore_for_inference(model, prefix, use_ema=use_ema))


def restore_for_inference(model: tf.keras.Model, prefix: str, use_ema: bool = True) -> int:
    """Loads a checkpoint into `model` and returns its training step.

    Our training checkpoints hold the weights and their moving average: `use_ema` puts the average in the
    model. automl's TF1 checkpoints go through the name-based loader, which prefers their
    `ExponentialMovingAverage` values when `use_ema`.
    """
    reader = tf.train.load_checkpoint(prefix)
    names = reader.get_variable_to_shape_map()
    step = _step_of(prefix, reader, names)
    has_ema = any(name.startswith("ema/") for name in names)
    if OBJECT_GRAPH_KEY not in names or not has_ema:
        if OBJECT_GRAPH_KEY in names and use_ema:
            log.warning("%s holds no moving average of the weights: using its raw weights", prefix)
        log.info(load_weights(model, prefix, prefer_ema=use_ema).summary())
        return step
    ema = build_ema(model, decay=0.0)  # the decay plays no part: the averages are read, not updated
    try:
        status = tf.train.Checkpoint(model=model, ema=ema).read(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
        raise CheckpointError(f"{prefix} does not fit this model (another variant or num_classes?): "
                              f"{str(error).splitlines()[0][:300]}") from None
    status.expect_partial()  # the optimizer's state is training's business
    if use_ema:
        ema.copy_to()
    return step


def _step_of(prefix: str, reader, names) -> int:
    for key in ("step/.ATTRIBUTES/VARIABLE_VALUE", "global_step"):
        if key in names:
            return int(reader.get_tensor(key))
    number = re.search(r"-(\d+)$", prefix)
    return int(number.group(1)) if number else 0
