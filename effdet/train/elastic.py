"""Training that goes on when workers come and go (hardware.elastic): Horovod Elastic around the trainer.

Every `trainer.elastic_commit_every_n_steps` steps, after the step's hooks, the workers commit: each copies the
training state (weights, optimizer, EMA, step, skipped steps, the input's position, the images trained) into
its own memory, and rank 0 asks Horovod's driver whether hosts were added. Then:
- a worker dies: the others' next collective fails; they put back the last commit, wait for Horovod to form a
  smaller group, and go on from there. The steps since that commit are trained again: at most the interval.
- hosts are added: at the next commit every worker stops its loop, Horovod forms the larger group, and the new
  workers take rank 0's state by broadcast before the first step.
After either, each worker reads its new rank and size, sets the learning rate for the new global batch,
re-shards the input at the committed position (InputPipeline.train_stream) and tells the hooks (`after_reset`);
the new rank 0, which may be another process, writes the logs and checkpoints from then on. The compiled step
is kept: what in it depends on the number of workers (the loss's scale, synchronized batch norm, the averages)
reads that number when it runs, so a change costs no tracing or XLA compilation.

Horovod is imported when an elastic job runs, never before: the rest of the project runs without it.
"""
import gc
import logging
import os
import time
from typing import Callable, Optional, Sequence

import tensorflow as tf

from effdet.artifacts import RUN_LOG
from effdet.train.hooks import Hook, every

log = logging.getLogger(__name__)


def lost_a_worker(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because a worker is gone: Horovod then shuts down, and every
    collective after that, in a compiled step or not, fails with its message."""
    return isinstance(error, tf.errors.OpError) and "Horovod" in str(error.message)


class Commit(Hook):
    """Commits the elastic state every `every_n_steps` steps and at the last step."""

    def __init__(self, state, every_n_steps: int):
        self.state, self.every_n_steps = state, every_n_steps

    def next_boundary(self, step):
        return every(self.every_n_steps, step)

    def after_loop(self, trainer, step, losses):
        if step % self.every_n_steps == 0 or step == trainer.settings.total_steps:
            self.state.commit()


def log_to_run_dir(run_dir: str) -> None:
    """Makes this process log as rank 0 does (progress at INFO, into the run dir's run.log as well as the
    console): it was started as another rank, which only prints warnings."""
    root = logging.getLogger()
    if not any(isinstance(handler, logging.FileHandler) for handler in root.handlers):
        handler = logging.FileHandler(os.path.join(run_dir, RUN_LOG), mode="a")
        formats = [h.formatter for h in root.handlers if h.formatter is not None]
        handler.setFormatter(formats[0] if formats else logging.Formatter(
            "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


class ElasticTraining:
    """Runs `trainer.finish` under Horovod Elastic. Made before the hooks (they need its `commit` hook) and
    given to `Trainer.fit` as its `elastic` argument."""

    def __init__(self, trainer, commit_every_n_steps: int):
        import horovod.tensorflow as hvd
        from horovod.common.elastic import ObjectState

        self.trainer, self.hvd = trainer, hvd
        self.hooks: Sequence[Hook] = ()
        self.resets, self.waited = 0, 0.0
        training = self

        class TrainingState(ObjectState):
            """The trainer's state, committed to and restored from host memory, and broadcast from rank 0."""

            def __init__(self):
                self.values, self.images_trained, self.step_lost_at = None, 0, None
                super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank)
                self.save()

            def save(self):
                self.values = [variable.numpy() for variable in training.trainer.state_variables]
                self.images_trained = training.trainer.images_trained

            def restore(self):
                trainer = training.trainer
                self.step_lost_at = int(trainer.step)
                for variable, value in zip(trainer.state_variables, self.values):
                    variable.assign(value)
                trainer.images_trained = self.images_trained
                # Should too few workers be left to go on, a new job resumes from here: written by this
                # group's rank 0, if it is still there, before Horovod makes the next group.
                path = trainer.save()
                if path:
                    log.warning("a worker was lost at step %d; checkpoint of the last commit (step %d): %s",
                                self.step_lost_at, int(trainer.step), path)

            def sync(self):
                trainer = training.trainer
                hvd.broadcast_variables(trainer.state_variables, root_rank=0)
                trainer.images_trained = hvd.broadcast_object(trainer.images_trained, root_rank=0)
                self.save()

        self.state = TrainingState()
        self.state.register_reset_callbacks([self._after_reset])
        self.commit = Commit(self.state, commit_every_n_steps)

    def __call__(self, trainer, dataset_at: Callable[[int], tf.data.Dataset], hooks: Sequence[Hook]):
        from horovod.common.elastic import run_fn
        from horovod.common.exceptions import HorovodInternalError

        self.hooks = hooks

        def body(_state):
            try:
                return trainer.finish(dataset_at, hooks)
            except tf.errors.OpError as error:
                if lost_a_worker(error):
                    raise HorovodInternalError(error) from error
                raise

        def reset():
            started = time.perf_counter()
            self.hvd.shutdown()
            self.hvd.init()  # returns once Horovod's driver has formed the new group
            self.waited = time.perf_counter() - started

        trainer.adapt_to_workers()  # the workers there are at the start; after each change, _after_reset
        return run_fn(body, reset)(self.state)

    def _after_reset(self) -> None:
        trainer, workers = self.trainer, self.trainer.workers
        old_size, was_chief = workers.size, workers.is_chief
        workers.refresh()
        trainer.adapt_to_workers()
        self.resets += 1
        step = int(trainer.step)
        if workers.is_chief and not was_chief:
            log_to_run_dir(trainer.run_dir)
            trainer.save()  # the last commit, in case the old rank 0 could not write it
        if workers.is_chief:
            lost_at = self.state.step_lost_at
            lost = f"; steps {step + 1}-{lost_at} are trained again" if lost_at and lost_at > step else ""
            log.warning("workers changed from %d to %d at step %d (reset %d, %.1f s waiting for the new group); "
                        "training goes on from the last commit, step %d, with a global batch of %d%s",
                        old_size, workers.size, lost_at or step, self.resets, self.waited, step,
                        trainer.settings.batch_size * workers.size, lost)
        self.state.step_lost_at = None
        for hook in self.hooks:
            hook.after_reset(trainer, step)
        # What the interrupted loop held (its input iterator, the failed collective's frames) is garbage now;
        # collected here, while every worker waits for the new group anyway, rather than by a collection that
        # starts in one worker in the middle of a later collective and holds all the others.
        gc.collect()


def elastic_training(trainer, commit_every_n_steps: int) -> Optional[ElasticTraining]:
    """The trainer's ElasticTraining when its workers are elastic, else None."""
    return ElasticTraining(trainer, commit_every_n_steps) if trainer.workers.elastic else None
