"""mode=eval: COCO metrics of a checkpoint (ours, with its EMA weights by default, or automl's), once or
continuously as a training run writes new ones."""
import json
import logging
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from effdet.data.builder import build_labeler
from effdet.data.sources import build_source
from effdet.errors import CheckpointError, ConfigError
from effdet.eval.evaluate import evaluate_and_record, write_testdev_detections
from effdet.model.builder import build_model
from effdet.model.checkpoint import OBJECT_GRAPH_KEY, load_weights, resolve_checkpoint
from effdet.modes.registry import MODES
from effdet.modes.train import TRAINING_PLAN
from effdet.train.builder import build_ema
from effdet.train.distributed import Workers, init_workers

log = logging.getLogger(__name__)


@MODES.register("eval")
def evaluate_checkpoint(cfg: Any, run_dir: str) -> Dict[str, Any]:
    source = build_source(cfg.data)
    workers = init_workers()
    if cfg.eval.continuous and workers.size > 1:
        raise ConfigError("eval.continuous=true runs in one process (it follows a training run's checkpoints as "
                          f"they appear); this job has {workers.size} workers: use hardware.num_workers=1")
    if cfg.eval.testdev_dir:
        return _testdev(cfg, source, cfg.eval.ckpt or run_dir, workers)
    if not source.val_file_pattern or not source.val_json_file:
        raise ConfigError(f"data '{source.name}' has no val split with COCO ground truth (val_file_pattern and "
                          "val_json_file) to evaluate on")
    labeler = build_labeler(cfg.model)
    model = build_model(cfg.model, source.num_classes)
    where = cfg.eval.ckpt or run_dir

    def evaluate(prefix: str) -> int:
        step = restore_for_evaluation(model, prefix, use_ema=cfg.eval.use_ema)
        log.info("evaluating %s (%s weights, step %d)", prefix, "EMA" if cfg.eval.use_ema else "raw", step)
        evaluate_and_record(cfg, model, source, labeler, workers, run_dir, step)
        return step

    if cfg.eval.continuous:
        final_step = planned_total_steps(where)
        log.info("watching %s for new checkpoints%s", where, f" until step {final_step}" if final_step else "")
        evaluated = watch_checkpoints(lambda: latest_checkpoint_in(where), evaluate, cfg.eval.min_interval,
                                      cfg.eval.timeout, final_step)
        return {"evaluated": evaluated}
    prefix = checkpoint_of(where, key="eval.ckpt")
    return {"evaluated": [(prefix, evaluate(prefix))]}


def _testdev(cfg: Any, source, where: str, workers: Workers) -> Dict[str, Any]:
    """Test-dev: detections of the val split's images (no ground truth needed), written for submission."""
    if not source.val_file_pattern:
        raise ConfigError(f"eval.testdev_dir: data '{source.name}' has no val_file_pattern (the test-dev images)")
    prefix = checkpoint_of(where, key="eval.ckpt")
    model = build_model(cfg.model, source.num_classes)
    step = restore_for_evaluation(model, prefix, use_ema=cfg.eval.use_ema)
    written = write_testdev_detections(model, source, build_labeler(cfg.model), cfg.data, cfg.eval,
                                       cfg.eval.testdev_dir, workers)
    if workers.is_chief:
        print(f"test-dev detections of {written['num_images']} images ({written['num_detections']} detections, "
              f"step {step}): {written['path']}")
    return {"testdev": written, "step": step}


def watch_checkpoints(latest: Callable[[], Optional[str]], evaluate: Callable[[str], int], min_interval: float,
                      timeout: float, final_step: Optional[int] = None, poll: float = 1.0,
                      clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
                      ) -> List[Tuple[str, int]]:
    """Evaluates the newest checkpoint each time there is a new one (checkpoints that come and go between two
    looks are skipped, as automl's evaluator skips them), at least `min_interval` seconds apart. Ends once
    `final_step` is evaluated, or `timeout` seconds after the last new checkpoint (or the start)."""
    evaluated: List[Tuple[str, int]] = []
    done = set()
    last_new = clock()
    last_start = None
    while True:
        prefix = latest()
        if prefix is not None and prefix not in done:
            if last_start is not None and clock() - last_start < min_interval:
                sleep(min(poll, min_interval - (clock() - last_start)))
                continue
            last_start = clock()
            step = evaluate(prefix)
            done.add(prefix)
            evaluated.append((prefix, step))
            last_new = clock()
            if final_step is not None and step >= final_step:
                log.info("step %d is the run's last: continuous evaluation ends", step)
                return evaluated
            continue
        if clock() - last_new >= timeout:
            log.info("no new checkpoint for %.0f s: continuous evaluation ends", timeout)
            return evaluated
        sleep(poll)


def latest_checkpoint_in(path: str) -> Optional[str]:
    """The newest complete checkpoint under a run dir or a checkpoint dir, or None (yet)."""
    path = os.path.expanduser(str(path))
    directory = os.path.join(path, "checkpoints") if os.path.isdir(os.path.join(path, "checkpoints")) else path
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


def planned_total_steps(path: str) -> Optional[int]:
    """The last step of the training run in `path`, from its training_plan.json (None when unknown)."""
    plan = os.path.join(os.path.expanduser(str(path)), TRAINING_PLAN)
    if not os.path.exists(plan):
        return None
    with open(plan) as handle:
        return int(json.load(handle)["total_steps"])


def checkpoint_of(path: str, key: Optional[str] = None) -> str:
    """A checkpoint prefix from a prefix, a directory of checkpoints, or a run dir (its checkpoints/). An error
    names the config `key` the path came from."""
    expanded = os.path.expanduser(str(path))
    run_checkpoints = os.path.join(expanded, "checkpoints")
    try:
        if os.path.isdir(run_checkpoints) and not os.path.exists(os.path.join(expanded, "checkpoint")):
            return resolve_checkpoint(run_checkpoints)
        return resolve_checkpoint(expanded)
    except CheckpointError as error:
        if key is None:
            raise
        raise CheckpointError(f"{key}={path}: {error}") from None


def restore_for_evaluation(model: tf.keras.Model, prefix: str, use_ema: bool = True) -> int:
    """Loads a checkpoint into `model` for evaluation and returns its training step.

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
            log.warning("%s holds no moving average of the weights: evaluating its raw weights", prefix)
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
