"""mode=eval: COCO metrics of a checkpoint (ours, with its EMA weights by default, or automl's), once or
continuously as a training run writes new ones."""
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from effdet.artifacts import TRAINING_PLAN, checkpoint_dir
from effdet.data.builder import build_labeler
from effdet.data.sources import build_source
from effdet.errors import ConfigError
from effdet.eval.convert import calibration_of
from effdet.eval.evaluate import RecordedEvaluations, evaluate_and_record, write_testdev_detections
from effdet.hardware.workers import Workers, init_workers
from effdet.model.builder import build_model
from effdet.model.detector import build_detector, restore_for_inference
from effdet.modes.registry import MODES

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
    where = cfg.eval.ckpt or run_dir

    def evaluate(model, prefix: str, step: int, evaluations: Optional[RecordedEvaluations] = None) -> int:
        log.info("evaluating %s (%s weights, step %d)", prefix, "EMA" if cfg.eval.use_ema else "raw", step)
        if evaluations is None:
            evaluate_and_record(cfg, model, source, labeler, workers, run_dir, step)
        else:
            evaluations(step)
        return step

    if cfg.eval.continuous:  # one network, into which each new checkpoint is restored, evaluated by one recorder
        model = build_model(cfg.model, source.num_classes)
        final_step = planned_total_steps(where)
        log.info("watching %s for new checkpoints%s", where, f" until step {final_step}" if final_step else "")
        with RecordedEvaluations(cfg, model, source, labeler, workers, run_dir) as evaluations:
            evaluated = watch_checkpoints(
                lambda: latest_checkpoint_in(where),
                lambda prefix: evaluate(model, prefix, restore_for_inference(model, prefix, use_ema=cfg.eval.use_ema),
                                        evaluations),
                cfg.eval.min_interval, cfg.eval.timeout, final_step)
        return {"evaluated": evaluated}
    detector = build_detector(cfg, where, cfg.eval.use_ema, key="eval.ckpt")
    return {"evaluated": [(detector.prefix, evaluate(*detector))]}


def _testdev(cfg: Any, source, where: str, workers: Workers) -> Dict[str, Any]:
    """Test-dev: detections of the val split's images (no ground truth needed), written for submission."""
    if not source.val_file_pattern:
        raise ConfigError(f"eval.testdev_dir: data '{source.name}' has no val_file_pattern (the test-dev images)")
    model, _, step = build_detector(cfg, where, cfg.eval.use_ema, key="eval.ckpt")
    labeler = build_labeler(cfg.model)
    written = write_testdev_detections(model, source, labeler, cfg.data, cfg.eval, cfg.eval.testdev_dir, workers,
                                       calibration_of(cfg, source, labeler))
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
    directory = checkpoint_dir(path) if os.path.isdir(checkpoint_dir(path)) else path
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


def planned_total_steps(path: str) -> Optional[int]:
    """The last step of the training run in `path`, from its training_plan.json (None when unknown)."""
    plan = os.path.join(os.path.expanduser(str(path)), TRAINING_PLAN)
    if not os.path.exists(plan):
        return None
    with open(plan) as handle:
        return int(json.load(handle)["total_steps"])
