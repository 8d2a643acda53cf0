"""What runs around the training loop: checkpoints, the history and TensorBoard, the console log, the progress
bar, stop signals and periodic evaluation, each a `Hook` given to `Trainer.fit`.

The contract (every method is optional):
- `before_fit(trainer)`: once, before the first loop (the trainer is restored: `trainer.step` is the start).
- `next_boundary(step) -> Optional[int]`: the first step after `step` at which this hook must run; a compiled
  loop never runs past it (`None`: any step will do).
- `after_loop(trainer, step, losses)`: after each compiled loop, with the step reached and the loop's mean
  losses, on every worker (hooks that write check `trainer.workers.is_chief`). A hook that wants training to
  end calls `trainer.request_stop(why)`: the workers agree on it after the next loop, save a checkpoint and stop.
- `after_fit(trainer, outcome)`: once, `outcome` being "done" (total_steps reached), "stopped" (a stop request)
  or "failed" (an error is on its way up: release what you hold, start nothing long).
- `after_reset(trainer, step)`: in an elastic job (hardware.elastic), on every worker after the workers changed:
  training goes on from `step` (the last commit; later steps are trained again), with `trainer.workers`
  holding the new ranks and size. This process may have just become rank 0.
- `paused_seconds`: wall time the hook spent on work that is not training (evaluation), left out of the
  trainer's images per second.

`build_hooks` assembles the usual set in the order they must run in.
"""
import collections
import json
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import tensorflow as tf

from effdet.artifacts import TENSORBOARD, TRAIN_HISTORY

log = logging.getLogger(__name__)


class Hook:
    paused_seconds = 0.0

    def before_fit(self, trainer) -> None:
        pass

    def next_boundary(self, step: int) -> Optional[int]:
        return None

    def after_loop(self, trainer, step: int, losses: Dict[str, float]) -> None:
        pass

    def after_fit(self, trainer, outcome: str) -> None:
        pass

    def after_reset(self, trainer, step: int) -> None:
        pass


def every(n: int, step: int) -> int:
    """The first multiple of `n` after `step`."""
    return (step // n + 1) * n


class StopOnSignal(Hook):
    """SIGTERM and Ctrl-C finish the current loop, save a checkpoint and stop cleanly."""

    def __init__(self):
        self._previous = {}

    def before_fit(self, trainer):
        def request(signum, _frame):
            trainer.request_stop(signal.Signals(signum).name)

        self._previous = {s: signal.signal(s, request) for s in (signal.SIGTERM, signal.SIGINT)}

    def after_fit(self, trainer, outcome):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


class History(Hook):
    """One JSON line per loop in train_history.jsonl, written as training goes (a killed run keeps its curves up
    to the kill), and the same scalars in TensorBoard. `entries` holds this fit's last `keep` records on every
    worker: the file has them all, and a list of every step of a long run would grow without end."""

    def __init__(self, run_dir: str, keep: int = 10_000):
        self.path = os.path.join(run_dir, TRAIN_HISTORY)
        self.tensorboard_dir = os.path.join(run_dir, TENSORBOARD)
        self.entries: Deque[Dict[str, float]] = collections.deque(maxlen=keep)
        self._writer, self._chief = None, False

    def before_fit(self, trainer):
        self._chief = trainer.workers.is_chief
        self._writer = tf.summary.create_file_writer(self.tensorboard_dir) if self._chief \
            else tf.summary.create_noop_writer()

    def after_loop(self, trainer, step, losses):
        entry = {"step": step, **{k: v for k, v in losses.items() if k != "finite"}}
        if trainer.learning_rate is not None:
            entry["learning_rate"] = float(trainer.learning_rate(step))
        if trainer.corrupt_met:  # bad records met so far, over all workers (clean runs keep their usual curves)
            entry["corrupt_records"] = trainer.corrupt_met
        if trainer.workers.elastic:  # how many trained this step
            entry["workers"] = trainer.workers.size
        self.entries.append(entry)
        if trainer.workers.is_chief:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(entry) + "\n")
        with self._writer.as_default(step=step):
            for key, value in entry.items():
                if key != "step":
                    tf.summary.scalar(f"train/{key}", value)

    def after_fit(self, trainer, outcome):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def after_reset(self, trainer, step):
        """The steps after `step` are trained again: their lines go, so that the file has every step once.
        A worker that has just become rank 0 takes over the file and TensorBoard."""
        while self.entries and self.entries[-1]["step"] > step:
            self.entries.pop()
        if trainer.workers.is_chief != self._chief and self._writer is not None:
            self._writer.close()
            self.before_fit(trainer)
        if not trainer.workers.is_chief:
            return
        kept = [line for line in _lines(self.path) if (line_step := _step_of(line)) is not None and line_step <= step]
        with open(self.path + ".tmp", "w") as handle:
            handle.writelines(kept)
        os.replace(self.path + ".tmp", self.path)


def _lines(path: str) -> List[str]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [line if line.endswith("\n") else line + "\n" for line in handle if line.strip()]


def _step_of(line: str) -> Optional[int]:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def read_history(path: str) -> List[Dict[str, float]]:
    """train_history.jsonl in step order. Steps trained again after a crash keep their latest record; a line
    cut short by a kill is left out (and reported)."""
    if not os.path.exists(path):
        return []
    by_step, broken = {}, 0
    with open(path) as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                broken += bool(line.strip())
                continue
            by_step[entry["step"]] = entry
    if broken:
        log.warning("%s: %d line(s) cut short by an interrupted run were left out", path, broken)
    return [by_step[step] for step in sorted(by_step)]


class ConsoleLog(Hook):
    """A line every `every_n_steps` steps and at the last: losses, learning rate, throughput, time left."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps
        self._started = self._last = (0.0, 0)

    def before_fit(self, trainer):
        self._started = self._last = (time.perf_counter(), int(trainer.step))

    def after_reset(self, trainer, step):
        self.before_fit(trainer)  # speed and time left from the new workers' steps only

    def next_boundary(self, step):
        return every(self.every_n_steps, step)

    def after_loop(self, trainer, step, losses):
        settings = trainer.settings
        if step % self.every_n_steps and step != settings.total_steps:
            return
        now = time.perf_counter()
        (last_time, last_step), (started, start_step) = self._last, self._started
        self._last = (now, step)
        if not trainer.workers.is_chief:
            return
        rate = (step - last_step) * settings.batch_size * trainer.workers.size / max(now - last_time, 1e-9)
        eta = (now - started) / max(step - start_step, 1) * (settings.total_steps - step)
        parts = " ".join(f"{k}={v:.4f}" for k, v in losses.items() if k.endswith("loss"))
        lr = f" lr={float(trainer.learning_rate(step)):.5f}" if trainer.learning_rate is not None else ""
        corrupt = f" corrupt_records={trainer.corrupt_met}" if trainer.corrupt_met else ""
        log.info("step %d/%d epoch %.2f %s%s img/s=%.1f eta=%s%s", step, settings.total_steps,
                 step / settings.steps_per_epoch, parts, lr, rate, duration(eta), corrupt)


class ProgressBar(Hook):
    """A tqdm bar on rank 0, with the last loop's total loss."""

    def __init__(self):
        self._bar, self._step = None, 0

    def before_fit(self, trainer):
        if not trainer.workers.is_chief:
            return
        from tqdm import tqdm

        self._step = int(trainer.step)
        self._bar = tqdm(total=trainer.settings.total_steps, initial=self._step, unit="step", dynamic_ncols=True,
                         desc="train", mininterval=1.0)

    def after_loop(self, trainer, step, losses):
        if self._bar is not None:
            self._bar.update(step - self._step)
            self._bar.set_postfix(loss=f"{losses['total_loss']:.3f}", refresh=False)
        self._step = step

    def after_fit(self, trainer, outcome):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def after_reset(self, trainer, step):
        if self._bar is None:
            self.before_fit(trainer)  # this worker has become rank 0
        else:
            self._bar.reset(total=trainer.settings.total_steps)
            self._bar.update(step)
        self._step = step


class PeriodicCheckpoint(Hook):
    """A checkpoint every `every_n_steps` steps and at the last step (rank 0 writes it)."""

    def __init__(self, every_n_steps: int):
        self.every_n_steps = every_n_steps

    def next_boundary(self, step):
        return every(self.every_n_steps, step)

    def after_loop(self, trainer, step, losses):
        if step % self.every_n_steps == 0 or step == trainer.settings.total_steps:
            trainer.save()


class Evaluation(Hook):
    """Evaluates with `evaluate(step)` every `every_n_steps` steps (None: never in between) and, when `at_end`,
    once training is done; `results` maps each evaluated step to what `evaluate` returned. The weights it
    evaluates are saved first: a kill during an evaluation resumes from them, and the metrics name a checkpoint
    that exists. Every worker evaluates (each its share of the val set)."""

    def __init__(self, evaluate: Callable[[int], dict], every_n_steps: Optional[int] = None, at_end: bool = True):
        self.evaluate, self.every_n_steps, self.at_end = evaluate, every_n_steps, at_end
        self.results: Dict[int, dict] = {}
        self.paused_seconds = 0.0

    def next_boundary(self, step):
        return every(self.every_n_steps, step) if self.every_n_steps else None

    def after_loop(self, trainer, step, losses):
        if self.every_n_steps and step % self.every_n_steps == 0 and step < trainer.settings.total_steps:
            trainer.save()
            started = time.perf_counter()
            self.results[step] = self.evaluate(step)
            self.paused_seconds += time.perf_counter() - started

    def after_fit(self, trainer, outcome):
        if outcome == "done" and self.at_end:
            trainer.save()
            self.results[int(trainer.step)] = self.evaluate(int(trainer.step))

    def after_reset(self, trainer, step):
        for later in [evaluated for evaluated in self.results if evaluated > step]:
            del self.results[later]  # of weights that are trained again

    @property
    def last(self) -> Optional[dict]:
        return self.results[max(self.results)] if self.results else None


class StepTimer(Hook):
    """Marks the end of the loop that reaches step `after` (the warm-up: tracing, compiling, filling the input
    pipeline) and the end of the last loop, with `mark()` (the clock by default): `start` and `end` are
    (step, mark) pairs. The loops' work is done when a hook runs, so the marks time the steps alone."""

    def __init__(self, after: int, mark: Callable[[], Any] = time.perf_counter):
        self.after, self.mark = after, mark
        self.start: Optional[Tuple[int, Any]] = None
        self.end: Optional[Tuple[int, Any]] = None

    def next_boundary(self, step):
        return self.after if step < self.after else None

    def after_loop(self, trainer, step, losses):
        if step == self.after:
            self.start = (step, self.mark())
        elif step > self.after:
            self.end = (step, self.mark())


def evaluation_interval(steps_per_epoch: int, every_n_epochs: Optional[float]) -> Optional[int]:
    """eval.every_n_epochs in steps (at least one); None or 0: no evaluation during training."""
    if not every_n_epochs:
        return None
    return max(1, int(round(every_n_epochs * steps_per_epoch)))


def build_hooks(trainer, evaluation: Optional[Evaluation] = None, commit: Optional[Hook] = None) -> List[Hook]:
    """The hooks of a training run, in the order they run after each loop:
    1. StopOnSignal first, so that a signal during any later hook's work (a long evaluation) is caught;
    2. History before anything that can fail, so that a step's losses are on disk even if its checkpoint is not;
    3. ConsoleLog and ProgressBar show what was just recorded;
    4. PeriodicCheckpoint before Evaluation, so that the weights being evaluated are on disk;
    5. Evaluation: the slowest, and it closes the run (after_fit) once the others are done;
    6. an elastic job's commit (effdet/train/elastic.py) after everything a step's hooks do, so that a change
       of workers never makes a committed step's work (its evaluation) run twice."""
    settings = trainer.settings
    hooks = [StopOnSignal(), History(trainer.run_dir), ConsoleLog(settings.log_every_n_steps)]
    if settings.progress_bar:
        hooks.append(ProgressBar())
    hooks.append(PeriodicCheckpoint(settings.checkpoint_every_n_steps))
    if evaluation is not None:
        hooks.append(evaluation)
    if commit is not None:
        hooks.append(commit)
    return hooks


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"
