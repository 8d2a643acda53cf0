"""The training loop: EfficientDet's recipe (clipping, weight decay, EMA) on any number of Horovod workers,
with checkpoints that survive crashes, automatic resume, and a guard against non-finite losses."""
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from effdet.data.reader import (CorruptDataError, CorruptRecords, describe_counts, merge_counts, over_threshold,
                                stop_reason)
from effdet.errors import DataError, EffdetError
from effdet.hardware.workers import Workers
from effdet.train.losses import weight_decay

log = logging.getLogger(__name__)


class NonFiniteLossError(EffdetError):
    """Training produced a non-finite loss or weights; the message names the step and the last good checkpoint."""


@dataclass
class TrainSettings:
    total_steps: int
    steps_per_epoch: int
    batch_size: int  # per worker
    clip_gradient_norm: float = 10.0
    weight_decay: float = 4e-5
    steps_per_loop: int = 1
    checkpoint_every_n_steps: int = 1000
    keep_checkpoint_max: int = 5
    log_every_n_steps: int = 100
    on_nonfinite: str = "stop"  # stop | skip
    xla: bool = False
    loss_scaling: bool = False  # float16: the optimizer is a LossScaleOptimizer
    progress_bar: bool = True


class Trainer:
    def __init__(self, model: tf.keras.Model, loss_fn: Callable, optimizer, ema, workers: Workers, run_dir: str,
                 settings: TrainSettings, learning_rate: Callable = None, corrupt: Optional[CorruptRecords] = None):
        self.model, self.loss_fn, self.optimizer, self.ema = model, loss_fn, optimizer, ema
        self.workers, self.run_dir, self.settings = workers, run_dir, settings
        self.learning_rate = learning_rate
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_steps")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, ema=ema, step=self.step,
                                              skipped_steps=self.skipped_steps)
        self.checkpoint_dir = os.path.join(run_dir, "checkpoints")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.checkpoint_dir,
                                                  max_to_keep=settings.keep_checkpoint_max, checkpoint_name="ckpt")
        self.history: List[Dict[str, float]] = []
        # One JSON line per recorded step, written as training goes: a killed run keeps its curves up to the kill.
        self.history_path = os.path.join(run_dir, "train_history.jsonl")
        self._stop_requested: Optional[str] = None
        # The training input's bad records (this worker's readers count them); None: nothing to watch.
        self.corrupt = corrupt
        self.corrupt_met = 0  # over all workers, as of the last loop
        self._input = None  # (dataset_at, step, iterator): where the last fit left this worker's batches
        self._loop = self._build_loop()

    # --- state ----------------------------------------------------------------------------------------------

    def restore_or_start(self, initialize: Callable[[], None] = None) -> int:
        """Resumes from the run dir's latest checkpoint (everything: weights, optimizer, EMA, step), or starts
        fresh with `initialize` (pretrained weights); then all workers take rank 0's state."""
        self.optimizer.build(self.model.trainable_variables)
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.read(latest).assert_existing_objects_matched()
            log.info("resumed from %s at step %d", latest, int(self.step))
        elif initialize is not None:
            initialize()
            self.ema.reset()
        self.workers.broadcast(self.model.variables + self.optimizer.variables + list(self.ema.shadow_variables)
                               + [self.step, self.skipped_steps])
        return int(self.step)

    def save(self) -> Optional[str]:
        """Writes a checkpoint (rank 0 only) after checking that nothing in it is non-finite."""
        if not self.workers.is_chief:
            return None
        bad = [v.name for v in self.model.variables + list(self.ema.shadow_variables)
               if v.dtype.is_floating and not np.isfinite(v.numpy()).all()]
        if bad:
            raise NonFiniteLossError(
                f"weights became non-finite by step {int(self.step)} ({bad[0]} and {len(bad) - 1} more); nothing "
                f"saved. Last good checkpoint: {self.manager.latest_checkpoint or 'none'}")
        # CheckpointManager writes the data and index files first and then, atomically, the 'checkpoint'
        # file that names the latest one: a crash mid-write leaves the previous checkpoint as the latest.
        return self.manager.save(checkpoint_number=int(self.step))

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

        def train_step(images, targets):
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
                losses = train_step(*next(iterator))
                return i + 1, {k: sums[k] + tf.cast(losses[k], tf.float32) for k in keys}

            zeros = {k: tf.constant(0.0) for k in keys}
            _, sums = tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), zeros))
            means = {k: v / tf.cast(steps, tf.float32) for k, v in sums.items()}
            means["finite"] = tf.cast(sums["finite"] >= tf.cast(steps, tf.float32), tf.float32)
            return means

        return loop

    # --- the loop -------------------------------------------------------------------------------------------

    def fit(self, dataset_at: Callable[[int], tf.data.Dataset], until: Optional[int] = None) -> Dict[str, float]:
        """Trains until settings.total_steps, or until step `until` (a checkpoint is written there: an evaluation
        between two calls sees the weights it evaluates on disk). `dataset_at(step)` gives this worker's batches
        from that step."""
        settings = self.settings
        stop_at = settings.total_steps if until is None else min(until, settings.total_steps)
        start_step = int(self.step)
        iterator = self._batches(dataset_at, start_step)
        writer = tf.summary.create_file_writer(os.path.join(self.run_dir, "tensorboard")) \
            if self.workers.is_chief else tf.summary.create_noop_writer()
        progress = self._progress_bar(start_step)
        restore_signals = self._catch_stop_signals()
        last_log = (time.perf_counter(), start_step)
        started = time.perf_counter()
        try:
            while int(self.step) < stop_at:
                steps = min(settings.steps_per_loop, stop_at - int(self.step),
                            self._steps_to_next_boundary())
                losses = self._run_loop(iterator, int(self.step) + steps)
                step = int(self.step)
                signalled, data_problem = self._agree_to_stop()
                if losses["finite"] < 1:
                    self._on_nonfinite(step, steps)
                self._record(step, losses, writer)
                if progress is not None:
                    progress.update(steps)
                    progress.set_postfix(loss=f"{losses['total_loss']:.3f}", refresh=False)
                if step % settings.log_every_n_steps == 0 or step == settings.total_steps:
                    last_log = self._log(step, losses, last_log, started, start_step)
                saved = step % settings.checkpoint_every_n_steps == 0 or step == stop_at
                if saved:
                    self.save()
                if data_problem:
                    path = self.manager.latest_checkpoint if saved else self.save()
                    raise CorruptDataError(f"{data_problem}. Checkpoint saved at step {step}: "
                                           f"{path or 'by rank 0'}. Run mode=check_data to list every bad record; "
                                           "data.on_corrupt=skip skips them")
                if signalled:
                    path = self.save()
                    log.warning("stopped by %s at step %d; checkpoint saved: %s", self._stop_requested or "a worker",
                                step, path or "(by rank 0)")
                    break
        finally:
            restore_signals()
            if progress is not None:
                progress.close()
            writer.flush()
        elapsed = time.perf_counter() - started
        trained = int(self.step) - start_step
        if int(self.step) < settings.total_steps:  # train_and_eval fits again from here after evaluating
            self._input = (dataset_at, int(self.step), iterator)
        return {"step": int(self.step), "stopped_early": int(self.step) < stop_at,
                "skipped_steps": int(self.skipped_steps), "seconds": elapsed,
                "images_per_second": trained * settings.batch_size * self.workers.size / max(elapsed, 1e-9)}

    def _batches(self, dataset_at: Callable[[int], tf.data.Dataset], step: int):
        """This worker's batches from `step` on: the iterator the last fit left at that step, if any, else a new
        one. A new stream that starts at step N reads and drops the N × batch records before it (the price of
        resuming the exact order), so fits that continue one another must not start it anew each time."""
        kept, self._input = self._input, None
        if kept is not None and kept[0] == dataset_at and kept[1] == step:
            return kept[2]
        del kept  # the old stream's buffers go before the new one fills its own
        return iter(dataset_at(step))

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

    def _steps_to_next_boundary(self) -> int:
        """Steps until the next log or checkpoint step, so that a loop never runs past one."""
        step = int(self.step)
        every = [self.settings.log_every_n_steps, self.settings.checkpoint_every_n_steps]
        return max(1, min(n - step % n for n in every))

    def _on_nonfinite(self, step: int, steps: int) -> None:
        if self.settings.on_nonfinite == "skip":
            log.warning("non-finite loss in steps %d..%d: skipped (%d skipped so far)", step - steps + 1, step,
                        int(self.skipped_steps))
            return
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (in steps {step - steps + 1}..{step}); training stopped, the update "
            f"was not applied. Last good checkpoint: {self.manager.latest_checkpoint or 'none'}. Lower "
            "optimizer.lr or set trainer.on_nonfinite=skip to skip such steps.")

    def _record(self, step, losses, writer):
        entry = {"step": step, **{k: v for k, v in losses.items() if k != "finite"}}
        if self.learning_rate is not None:
            entry["learning_rate"] = float(self.learning_rate(step))
        if self.corrupt_met:  # bad records met so far, over all workers (clean runs keep their usual curves)
            entry["corrupt_records"] = self.corrupt_met
        self.history.append(entry)
        if self.workers.is_chief:
            with open(self.history_path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        with writer.as_default(step=step):
            for key, value in entry.items():
                if key != "step":
                    tf.summary.scalar(f"train/{key}", value)

    def _log(self, step, losses, last_log, started, start_step):
        now = time.perf_counter()
        last_time, last_step = last_log
        rate = (step - last_step) * self.settings.batch_size * self.workers.size / max(now - last_time, 1e-9)
        per_step = (now - started) / max(step - start_step, 1)
        eta = per_step * (self.settings.total_steps - step)
        if self.workers.is_chief:
            parts = " ".join(f"{k}={v:.4f}" for k, v in losses.items() if k.endswith("loss"))
            lr = f" lr={float(self.learning_rate(step)):.5f}" if self.learning_rate is not None else ""
            corrupt = f" corrupt_records={self.corrupt_met}" if self.corrupt_met else ""
            log.info("step %d/%d epoch %.2f %s%s images/s=%.1f eta=%s%s", step, self.settings.total_steps,
                     step / self.settings.steps_per_epoch, parts, lr, rate, _duration(eta), corrupt)
        return now, step

    def _progress_bar(self, start_step):
        if not (self.workers.is_chief and self.settings.progress_bar):
            return None
        from tqdm import tqdm

        return tqdm(total=self.settings.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                    desc="train", mininterval=1.0)

    def _catch_stop_signals(self):
        """SIGTERM and Ctrl-C finish the current loop, save a checkpoint and stop cleanly."""
        def request(signum, _frame):
            self._stop_requested = signal.Signals(signum).name

        previous = {s: signal.signal(s, request) for s in (signal.SIGTERM, signal.SIGINT)}
        return lambda: [signal.signal(s, handler) for s, handler in previous.items()]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
