"""mode=train: build everything from the config, train (resuming if the run dir has checkpoints), evaluate."""
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import tensorflow as tf

from effdet.artifacts import TRAIN_HISTORY, TRAIN_SUMMARY, TRAINING_CURVES, TRAINING_PLAN, checkpoint_dir
from effdet.data.builder import build_input, build_labeler
from effdet.data.pipeline import Shard
from effdet.data.reader import describe_counts
from effdet.data.sources import build_source
from effdet.errors import CheckpointError, ConfigError
from effdet.hardware.launch import total_workers
from effdet.hardware.workers import init_workers
from effdet.model.builder import build_model
from effdet.model.checkpoint import load_weights, resolve_checkpoint
from effdet.model.ema import build_ema
from effdet.model.recompute import recomputed_layers, set_recompute
from effdet.modes.registry import MODES
from effdet.provenance import check_resume
from effdet.train.builder import build_loss, build_optimization, set_precision, steps_of
from effdet.train.curves import plot_training_curves
from effdet.train.elastic import elastic_training
from effdet.train.hooks import Evaluation, build_hooks, evaluation_interval, read_history
from effdet.train.trainer import Trainer, TrainSettings

log = logging.getLogger(__name__)


@dataclass
class Training:
    """Everything a training job is made of, built from the config and ready to `fit`."""

    trainer: Trainer
    dataset_at: Callable[[int], tf.data.Dataset]  # this worker's batches from a given step
    model: tf.keras.Model
    source: Any
    labeler: Any
    workers: Any


def build_training(cfg: Any, run_dir: str) -> Training:
    """Config → model, optimizer, EMA, trainer (resumed from the run dir's checkpoint, or initialised from
    trainer.ckpt / trainer.backbone_ckpt) and input pipeline."""
    trainer_cfg = cfg.trainer
    for key in ("ckpt", "backbone_ckpt"):  # a wrong path fails now, not after the dataset is built
        if trainer_cfg[key]:
            try:
                resolve_checkpoint(trainer_cfg[key])
            except CheckpointError as error:
                raise CheckpointError(f"trainer.{key}: {error}") from None
    workers = init_workers()
    has_checkpoint = tf.train.latest_checkpoint(checkpoint_dir(run_dir)) is not None
    check_resume(cfg, run_dir, has_checkpoint, workers.is_chief)
    if trainer_cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(trainer_cfg.seed)
    loss_scaling = set_precision(trainer_cfg.precision)

    source = build_source(cfg.data)
    labeler = build_labeler(cfg.model)
    model = build_model(cfg.model, source.num_classes)
    set_recompute(model, trainer_cfg.recompute)
    # An elastic job's plan (its steps, its schedule's shape) is the one of the workers it starts with, which
    # every worker, one added later too, reads from the config; the learning rate follows the workers there are.
    planned_workers = total_workers(cfg.hardware) if workers.elastic else workers.size
    global_batch = trainer_cfg.batch_size * planned_workers
    steps_per_epoch, total_steps = steps_of(trainer_cfg, source.num_train_examples, global_batch)
    schedule, optimizer = build_optimization(cfg.optimizer, global_batch, steps_per_epoch, total_steps, loss_scaling,
                                             elastic_workers=planned_workers if workers.elastic else None)
    settings = TrainSettings(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch, batch_size=trainer_cfg.batch_size,
        clip_gradient_norm=trainer_cfg.clip_gradient_norm, weight_decay=trainer_cfg.weight_decay,
        steps_per_loop=trainer_cfg.steps_per_loop, checkpoint_every_n_steps=trainer_cfg.checkpoint_every_n_steps,
        keep_checkpoint_max=trainer_cfg.keep_checkpoint_max, log_every_n_steps=trainer_cfg.log_every_n_steps,
        on_nonfinite=trainer_cfg.on_nonfinite, xla=trainer_cfg.xla, loss_scaling=loss_scaling,
        progress_bar=trainer_cfg.progress_bar)
    loss = build_loss(trainer_cfg.loss, cfg.model, source.num_classes, labeler.anchors, workers)
    pipeline = build_input(cfg.data, source, labeler, "train")
    corrupt = pipeline.corrupt
    if corrupt is not None:  # the bad-record fraction is judged against at least one pass over this worker's part
        # (an elastic job's workers each read every record)
        corrupt.expected_records = source.num_train_examples if workers.elastic else \
            -(-source.num_train_examples // workers.size)
    trainer = Trainer(model, loss, optimizer, build_ema(model, trainer_cfg.ema_decay), workers, run_dir, settings,
                      learning_rate=schedule, corrupt=corrupt, track_position=workers.elastic)

    def initialize():
        if trainer_cfg.backbone_ckpt:
            log.info(load_weights(model, trainer_cfg.backbone_ckpt, backbone_only=True).summary())
        if trainer_cfg.ckpt:
            log.info(load_weights(model, trainer_cfg.ckpt).summary())

    start = trainer.restore_or_start(initialize)
    log.info("training %s on %s: %d steps (%d per epoch, global batch %d on %d worker(s)), from step %d",
             cfg.model.name, source.name, total_steps, steps_per_epoch, global_batch, workers.size, start)
    if trainer_cfg.recompute != "none":
        log.info("recomputing activations in the backward pass: %s (trainer.recompute=%s)",
                 ", ".join(recomputed_layers(model, trainer_cfg.recompute)), trainer_cfg.recompute)
    if workers.elastic:
        log.info("elastic: %d to %s workers, commits every %d steps; the plan is for %d workers, the learning rate "
                 "follows the global batch", cfg.hardware.min_workers, cfg.hardware.max_workers or "any number of",
                 trainer_cfg.elastic_commit_every_n_steps, planned_workers)
    shard = Shard(workers.rank, workers.size)

    def dataset_at(step):
        if workers.elastic:  # one order for any number of workers, from where the last step ended
            return pipeline.train_stream(trainer_cfg.batch_size, Shard(workers.rank, workers.size),
                                         int(trainer.position))
        return pipeline.train(trainer_cfg.batch_size, shard, start_example=step * trainer_cfg.batch_size)

    return Training(trainer, dataset_at, model, source, labeler, workers)


@MODES.register("train")
def train(cfg: Any, run_dir: str) -> Dict[str, Any]:
    """Trains; evaluates at the end when trainer.eval_after_training."""
    return _train(cfg, run_dir, eval_every_n_epochs=None, eval_at_end=cfg.trainer.eval_after_training)


@MODES.register("train_and_eval")
def train_and_eval(cfg: Any, run_dir: str) -> Dict[str, Any]:
    """Trains and evaluates every eval.every_n_epochs epochs and at the end."""
    return _train(cfg, run_dir, eval_every_n_epochs=cfg.eval.every_n_epochs, eval_at_end=True)


def _train(cfg: Any, run_dir: str, eval_every_n_epochs: Optional[float], eval_at_end: bool) -> Dict[str, Any]:
    job = build_training(cfg, run_dir)
    trainer, workers, settings = job.trainer, job.workers, job.trainer.settings
    can_evaluate = bool(job.source.val_file_pattern and job.source.val_json_file)
    if eval_every_n_epochs and not can_evaluate:
        raise ConfigError(f"mode=train_and_eval: data '{job.source.name}' has no val split with COCO ground truth "
                          "(val_file_pattern and val_json_file); use mode=train")
    if workers.is_chief:  # what a continuous evaluation of this run dir waits for
        with open(os.path.join(run_dir, TRAINING_PLAN), "w") as handle:
            json.dump({"total_steps": settings.total_steps, "steps_per_epoch": settings.steps_per_epoch}, handle)

    evaluations = []  # the run's one RecordedEvaluations, made at the first evaluation

    def evaluate(step):
        from effdet.eval.evaluate import RecordedEvaluations

        if not evaluations:
            evaluations.append(RecordedEvaluations(cfg, job.model, job.source, job.labeler, workers, run_dir))
        with trainer.ema.swap():
            return evaluations[0](step)

    evaluation = Evaluation(evaluate, evaluation_interval(settings.steps_per_epoch, eval_every_n_epochs),
                            at_end=eval_at_end) if can_evaluate else None
    elastic = elastic_training(trainer, cfg.trainer.elastic_commit_every_n_steps)
    try:
        summary = trainer.fit(job.dataset_at, build_hooks(trainer, evaluation, elastic and elastic.commit), elastic)
    finally:
        for recorded in evaluations:
            recorded.close()
    result = {"eval": evaluation.last} if evaluation is not None and evaluation.results else {}
    corrupt = summary.get("corrupt_records")
    if corrupt is not None and corrupt["corrupt"] and workers.is_chief:
        log.warning("bad training records were skipped (data.on_corrupt=skip):\n%s", describe_counts(corrupt))
    result["train"] = summary
    if workers.is_chief:  # the whole run's curves, across resumes; this job's figures for a sweep's summary
        with open(os.path.join(run_dir, TRAIN_SUMMARY), "w") as handle:
            json.dump({key: summary[key] for key in ("step", "seconds", "images_per_second", "stopped_early",
                                                     "corrupt_records") if key in summary}, handle, indent=1)
        plot_training_curves(read_history(os.path.join(run_dir, TRAIN_HISTORY)), os.path.join(run_dir, TRAINING_CURVES))
    return result
