"""The training loop: EfficientDet's recipe (clipping, weight decay, EMA) on any number of Horovod workers,
with checkpoints that survive crashes, automatic resume, and a guard against non-finite losses."""
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from effdet.artifacts import checkpoint_dir
from effdet.config.schema import TrainerConfig, default_of
from effdet.data.pipeline import POSITIONS_PER_EPOCH
from effdet.data.reader import (CorruptDataError, CorruptRecords, describe_counts, merge_counts, over_threshold,
                                stop_reason)
from effdet.errors import DataError, EffdetError
from effdet.hardware.workers import Workers
from effdet.train.hooks import Hook
from effdet.train.losses import weight_decay

log = logging.getLogger(__name__)


class NonFiniteLossError(EffdetError):
    """Training produced a non-finite loss or weights; the message names the step and the last good checkpoint."""


@dataclass
class TrainSettings:
    """What the loop needs of the trainer config; a default is TrainerConfig's (the schema's)."""

    total_steps: int
    steps_per_epoch: int
    batch_size: int  # per worker
    xla: bool  # the schema's default is the device's (hardware.xla)
    loss_scaling: bool  # float16: the optimizer is a LossScaleOptimizer
    clip_gradient_norm: float = default_of(TrainerConfig, "clip_gradient_norm")
    weight_decay: float = default_of(TrainerConfig, "weight_decay")
    steps_per_loop: int = default_of(TrainerConfig, "steps_per_loop")
    checkpoint_every_n_steps: int = default_of(TrainerConfig, "checkpoint_every_n_steps")
    keep_checkpoint_max: int = default_of(TrainerConfig, "keep_checkpoint_max")
    log_every_n_steps: int = default_of(TrainerConfig, "log_every_n_steps")
    on_nonfinite: str = default_of(TrainerConfig, "on_nonfinite")
    progress_bar: bool = default_of(TrainerConfig, "progress_bar")


class Trainer:
    def __init__(self, model: tf.keras.Model, loss_fn: Callable, optimizer, ema, workers: Workers, run_dir: str,
                 settings: TrainSettings, learning_rate: Callable = None, corrupt: Optional[CorruptRecords] = None,
                 track_position: bool = False):
        self.model, self.loss_fn, self.optimizer, self.ema = model, loss_fn, optimizer, ema
        self.workers, self.run_dir, self.settings = workers, run_dir, settings
        self.learning_rate = learning_rate
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        # track_position (an elastic job): the input gives each batch's places in one global order of examples
        # (InputPipeline.train_stream), and this is the place after the last step's last example, on every
        # worker: where training goes on from after the workers change, or after a resume.
        self.position = tf.Variable(0, dtype=tf.int64, trainable=False, name="input_position") \
            if track_position else None
        state = {"input_position": self.position} if track_position else {}
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, ema=ema, step=self.step,
                                              skipped_steps=self.skipped_steps, **state)
        self.manager = self._checkpoint_manager()
        self._saved_step: Optional[int] = None  # the step of the checkpoint this process wrote or restored last
        self._stop_requested: Optional[str] = None
        # The training input's bad records (this worker's readers count them); None: nothing to watch.
        self.corrupt = corrupt
        self.corrupt_met = 0  # over all workers, as of the last loop
        self.images_trained = 0  # by this fit's steps, over all workers
        self._loop = self._build_loop()

    def _checkpoint_manager(self) -> tf.train.CheckpointManager:
        return tf.train.CheckpointManager(self.checkpoint, checkpoint_dir(self.run_dir),
                                          max_to_keep=self.settings.keep_checkpoint_max, checkpoint_name="ckpt")

    @property
    def state_variables(self) -> List[tf.Variable]:
        """Everything a step changes, that all workers hold alike: weights, optimizer, EMA, step, position."""
        return (self.model.variables + self.optimizer.variables + list(self.ema.shadow_variables)
                + [self.step, self.skipped_steps] + ([self.position] if self.position is not None else []))

    # --- state ----------------------------------------------------------------------------------------------

    def restore_or_start(self, initialize: Callable[[], None] = None) -> int:
        """Resumes from the run dir's latest checkpoint (everything: weights, optimizer, EMA, step), or starts
        fresh with `initialize` (pretrained weights); then all workers take rank 0's state."""
        self.optimizer.build(self.model.trainable_variables)
        latest = self.manager.latest_checkpoint
        if latest:
            self._read(latest)
            self._saved_step = int(self.step)
            log.info("resumed from %s at step %d", latest, int(self.step))
        elif initialize is not None:
            initialize()
            self.ema.reset()
        if not self.workers.elastic:  # an elastic job's workers take rank 0's state when its first step begins
            self.workers.broadcast(self.state_variables)
        return int(self.step)

    def _read(self, path: str) -> None:
        if self.position is None or tf.train.load_checkpoint(path).has_tensor(
                "input_position/.ATTRIBUTES/VARIABLE_VALUE"):
            self.checkpoint.read(path).assert_existing_objects_matched()
            return
        # Written by a job that was not elastic: its input had no global order to be placed in, so this one
        # starts at the beginning of the epoch that the step had reached.
        tf.train.Checkpoint(model=self.model, optimizer=self.optimizer, ema=self.ema, step=self.step,
                            skipped_steps=self.skipped_steps).read(path).assert_existing_objects_matched()
        epoch = int(self.step) // self.settings.steps_per_epoch
        self.position.assign(epoch * POSITIONS_PER_EPOCH)
        log.warning("%s was written without hardware.elastic: the input starts again at the beginning of epoch %d",
                    path, epoch)

    def save(self) -> Optional[str]:
        """Writes a checkpoint of this step (rank 0 only; once: a second call at the same step returns the first's
        path) after checking that nothing in it is non-finite."""
        if not self.workers.is_chief:
            return None
        if self._saved_step == int(self.step) and self.manager.latest_checkpoint:
            return self.manager.latest_checkpoint
        bad = [v.name for v in self.model.variables + list(self.ema.shadow_variables)
               if v.dtype.is_floating and not np.isfinite(v.numpy()).all()]
        if bad:
            raise NonFiniteLossError(
                f"weights became non-finite by step {int(self.step)} ({bad[0]} and {len(bad) - 1} more); nothing "
                f"saved. Last good checkpoint: {self.manager.latest_checkpoint or 'none'}")
        # CheckpointManager writes the data and index files first and then, atomically, the 'checkpoint'
        # file that names the latest one: a crash mid-write leaves the previous checkpoint as the latest.
        path = self.manager.save(checkpoint_number=int(self.step))
        self._saved_step = int(self.step)
        return path

    # --- the step -------------------------------------------------------------------------------------------

    def _build_loop(self):
        settings = self.settings
        variables = self.model.trainable_variables

        def forward_backward(images, targets):
            with tf.GradientTape() as tape:
                outputs = self.model(images, training=True)
                losses = self.loss_fn(outputs, targets)
                total = losses["det_loss"] + weight_decay(variables, settings.weight_decay)
                scaled = self.optimizer.get_scaled_loss(total) if settings.loss_scaling else total
            gradients = tape.gradient(scaled, variables)
            if settings.loss_scaling:
                gradients = self.optimizer.get_unscaled_gradients(gradients)
            losses["total_loss"] = total
            return losses, gradients

        if settings.xla:  # the collective stays outside the compiled part: Horovod's ops are not XLA ops
            forward_backward = tf.function(forward_backward, jit_compile=True)

        def train_step(batch):
            images, targets = batch[0], batch[1]
            if self.position is not None:  # the place after the step's last example, over all workers
                self.position.assign(self.workers.max(tf.reduce_max(batch[2])) + 1)
            losses, gradients = forward_backward(images, targets)
            gradients = self.workers.average_gradients(gradients)
            gradients, norm = tf.clip_by_global_norm(gradients, settings.clip_gradient_norm)
            if settings.loss_scaling:
                # Overflowing float16 gradients are the loss scale's business, not a diverged run: the
                # LossScaleOptimizer skips that update itself and lowers its scale.
                finite = tf.math.is_finite(losses["total_loss"])
            else:
                finite = tf.logical_and(tf.math.is_finite(losses["total_loss"]), tf.math.is_finite(norm))

            def apply():
                self.optimizer.apply_gradients(zip(gradients, variables))
                self.ema.update(self.step)
                return tf.constant(0, tf.int64)

            self.skipped_steps.assign_add(tf.cond(finite, apply, lambda: tf.constant(1, tf.int64)))
            self.step.assign_add(1)
            losses["gradient_norm"] = norm
            losses["finite"] = tf.cast(finite, tf.float32)
            return losses

        keys = list(self.loss_fn.keys) + ["total_loss", "gradient_norm", "finite"]

        # Traced once, without autograph (which would convert every Keras call and triple the trace time).
        @tf.function(autograph=False)
        def loop(iterator, steps):
            def body(i, sums):
                losses = train_step(next(iterator))
                return i + 1, {k: sums[k] + tf.cast(losses[k], tf.float32) for k in keys}

            zeros = {k: tf.constant(0.0) for k in keys}
            _, sums = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), zeros))
            means = {k: v / tf.cast(steps, tf.float32) for k, v in sums.items()}
            means["finite"] = tf.cast(sums["finite"] >= tf.cast(steps, tf.float32), tf.float32)
            return means

        return loop

    # --- the loop -------------------------------------------------------------------------------------------

    def fit(self, dataset_at: Callable[[int], tf.data.Dataset], hooks: Sequence[Hook] = (),
            elastic: Optional[Callable] = None) -> Dict[str, Any]:
        """Trains from the current step to settings.total_steps, unless a stop request (a signal, a hook) or bad
        data end it first. `dataset_at(step)` gives this worker's batches from that step; `hooks` (usually
        `build_hooks(trainer)`, effdet/train/hooks.py) do everything around the loop. `elastic`: runs the
        training (`finish`) so that it survives workers coming and going (effdet/train/elastic.py)."""
        started = time.perf_counter()
        self.images_trained = 0
        try:
            for hook in hooks:
                hook.before_fit(self)
            if elastic is None:
                outcome, corrupt = self.finish(dataset_at, hooks)
            else:
                outcome, corrupt = elastic(self, dataset_at, hooks)
        except BaseException:
            self._close(hooks, "failed")
            raise
        seconds = time.perf_counter() - started - sum(hook.paused_seconds for hook in hooks)
        summary = {"step": int(self.step), "stopped_early": outcome != "done",
                   "skipped_steps": int(self.skipped_steps), "seconds": seconds,
                   "images_per_second": self.images_trained / max(seconds, 1e-9)}
        if corrupt is not None:
            summary["corrupt_records"] = corrupt
        return summary

    def finish(self, dataset_at: Callable[[int], tf.data.Dataset], hooks: Sequence[Hook]):
        """Trains to the end and closes the hooks (every worker together: the end's evaluation and the bad-record
        summary are collectives); returns the outcome and every worker's bad training records (or None)."""
        outcome = self._train(iter(dataset_at(int(self.step))), hooks)
        self._close(hooks, outcome)
        return outcome, self.corrupt_summary()

    def adapt_to_workers(self) -> None:
        """After the workers changed (an elastic job): the learning rate for their global batch, a checkpoint
        manager that reads what an earlier rank 0 wrote. The step is not traced again: what in it depends on
        the number of workers reads it when it runs (Workers.size_tensor, averaging collectives)."""
        if hasattr(self.learning_rate, "set_workers"):
            self.learning_rate.set_workers(self.workers.size)
        self.manager = self._checkpoint_manager()
        self._saved_step = None  # steps after the last commit are trained again, and their checkpoints rewritten

    def request_stop(self, why: str) -> None:
        """Asks the workers to stop after the current loop, with a checkpoint (a signal handler's or a hook's
        call). The first reason given is the one reported."""
        self._stop_requested = self._stop_requested or why

    def _train(self, iterator, hooks: Sequence[Hook]) -> str:
        """The loops, each up to the next step a hook must see: "done" or "stopped"."""
        total = self.settings.total_steps
        while int(self.step) < total:
            begin = int(self.step)
            boundaries = [b for b in (hook.next_boundary(begin) for hook in hooks) if b is not None]
            losses = self._run_loop(iterator, min([begin + self.settings.steps_per_loop, total, *boundaries]))
            step = int(self.step)
            self.images_trained += (step - begin) * self.settings.batch_size * self.workers.size
            signalled, data_problem = self._agree_to_stop()
            if losses["finite"] < 1:
                self._on_nonfinite(step, step - begin)
            for hook in hooks:
                hook.after_loop(self, step, losses)
            if data_problem:
                raise CorruptDataError(f"{data_problem}. Checkpoint saved at step {step}: "
                                       f"{self.save() or 'by rank 0'}. Run mode=check_data to list every bad "
                                       "record; data.on_corrupt=skip skips them")
            if signalled:
                path = self.save()
                log.warning("stopped by %s at step %d; checkpoint saved: %s", self._stop_requested or "a worker",
                            step, path or "(by rank 0)")
                return "stopped"
        return "done"

    def _close(self, hooks: Sequence[Hook], outcome: str) -> None:
        """Every hook's after_fit. After a failure each one still runs, and the error on its way up stays the one
        reported."""
        for hook in hooks:
            if outcome != "failed":
                hook.after_fit(self, outcome)
                continue
            try:
                hook.after_fit(self, outcome)
            except Exception:  # noqa: BLE001  (the training error matters more than a hook's clean-up)
                log.exception("%s could not clean up after the failure", type(hook).__name__)

    def _run_loop(self, iterator, end: int) -> Dict[str, float]:
        """Trains up to step `end` in one compiled loop. A batch that the input cannot make (a record that
        decodes nowhere but in the step) is counted as a bad record and the loop goes on from the next batch:
        the same number of steps as every other worker, so that their collectives stay paired."""
        failures = 0
        while True:
            try:
                return {k: float(v) for k, v in self._loop(iterator, tf.constant(end - int(self.step))).items()}
            except tf.errors.OutOfRangeError:
                self._input_failed("the training data ran out: no record of data.train_file_pattern could be read")
            except tf.errors.OpError as error:
                if "IteratorGetNext" not in str(error) or self.corrupt is None:
                    raise
                failures += 1
                message = str(error).strip().splitlines()[0][:200]
                self.corrupt.bad("(a batch; shard unknown)", None, f"a record does not decode ({message})")
                stop = self.corrupt.stop_reason()
                if failures >= 100 or (stop and self.corrupt.on_corrupt == "skip"):
                    self._input_failed(stop or f"{failures} batches in a row could not be made ({message})")

    def _input_failed(self, why: str):
        path = self.save()
        where = f"Checkpoint saved at step {int(self.step)}: {path}" if path else \
            f"Rank {self.workers.rank} stopped at step {int(self.step)}; rank 0 holds the checkpoints"
        counts = f"\n{describe_counts(self.corrupt.counts())}" if self.corrupt and self.corrupt.corrupt else ""
        raise DataError(f"{why}. {where}{counts}")

    def _agree_to_stop(self):
        """One collective a loop: (a worker was signalled to stop, why the data make the run stop or None),
        the same on every worker. The data's verdict is over every worker's records."""
        counts = self.corrupt.counts() if self.corrupt is not None else None
        mine = [int(self._stop_requested is not None), counts["corrupt"] if counts else 0,
                counts["records_read"] + counts["corrupt"] if counts else 0]
        if self.workers.size > 1:
            mine = [int(v) for v in self.workers.sum(tf.constant(mine, tf.int64)).numpy()]
        signalled, corrupt, attempted = mine
        self.corrupt_met = corrupt
        if not corrupt:
            return bool(signalled), None
        tally = self.corrupt
        expected = (tally.expected_records or 0) * self.workers.size
        if tally.on_corrupt == "stop" or over_threshold(corrupt, attempted, tally.max_fraction, expected):
            merged = merge_counts(self.workers.gather(counts))
            return bool(signalled), stop_reason(merged, tally.on_corrupt, tally.max_fraction, expected)
        return bool(signalled), None

    def corrupt_summary(self) -> Optional[dict]:
        """Every worker's bad training records, merged (a collective: all workers call it together)."""
        if self.corrupt is None:
            return None
        return merge_counts(self.workers.gather(self.corrupt.counts()))

    def _on_nonfinite(self, step: int, steps: int) -> None:
        if self.settings.on_nonfinite == "skip":
            log.warning("non-finite loss in steps %d..%d: skipped (%d skipped so far)", step - steps + 1, step,
                        int(self.skipped_steps))
            return
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (in steps {step - steps + 1}..{step}); training stopped, the update "
            f"was not applied. Last good checkpoint: {self.manager.latest_checkpoint or 'none'}. Lower "
            "optimizer.lr or set trainer.on_nonfinite=skip to skip such steps.")
