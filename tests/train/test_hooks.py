"""What runs around the training loop, as hooks: their order, boundaries, stop requests, evaluation, clean-up."""
import json
import os
import signal
import time

import pytest

from effdet.train.hooks import Evaluation, Hook, StepTimer, build_hooks, evaluation_interval, every
from tests.train.test_trainer import fit, make_trainer, tiny_detector


class Seen(Hook):
    """Notes every call it gets; optionally a boundary every `every` steps and a stop request at `stop_at`."""

    def __init__(self, every=None, stop_at=None, fail_in_after_fit=False):
        self.every, self.stop_at, self.fail_in_after_fit = every, stop_at, fail_in_after_fit
        self.calls = []

    def before_fit(self, trainer):
        self.calls.append(("before", int(trainer.step)))

    def next_boundary(self, step):
        return every(self.every, step) if self.every else None

    def after_loop(self, trainer, step, losses):
        self.calls.append(("loop", step))
        if self.stop_at is not None and step >= self.stop_at:
            trainer.request_stop("Seen wants to stop")

    def after_fit(self, trainer, outcome):
        self.calls.append(("after", outcome))
        if self.fail_in_after_fit:
            raise RuntimeError("a clean-up that fails")


@pytest.mark.parametrize("per_epoch, every_n_epochs, expected", [(3, 1.0, 3), (4, 0.5, 2), (3, None, None),
                                                                 (3, 0, None), (100, 0.001, 1)])
def test_evaluation_interval_is_every_n_epochs_in_steps(per_epoch, every_n_epochs, expected):
    assert evaluation_interval(per_epoch, every_n_epochs) == expected


def test_one_fit_evaluates_every_n_steps_and_at_the_end_from_one_input_stream(tmp_path):
    """train_and_eval: one fit; the evaluation hook evaluates on the step's saved weights; the batches come
    from one stream (a new stream at step N would read and drop every record before it)."""
    trainer, data = make_trainer(tmp_path, total_steps=10, make_model=tiny_detector, steps_per_loop=5)
    started_at, evaluated = [], []

    def dataset_at(step):
        started_at.append(step)
        return data(step)

    def evaluate(step):
        evaluated.append((step, os.path.basename(trainer.manager.latest_checkpoint)))
        return {"AP": step / 100}

    evaluation = Evaluation(evaluate, every_n_steps=3, at_end=True)
    summary, history = fit(trainer, dataset_at, evaluation)
    assert summary["step"] == 10 and not summary["stopped_early"]
    assert started_at == [0]
    assert evaluated == [(3, "ckpt-3"), (6, "ckpt-6"), (9, "ckpt-9"), (10, "ckpt-10")]
    assert evaluation.last == {"AP": 0.1} and sorted(evaluation.results) == [3, 6, 9, 10]
    assert [entry["step"] for entry in history] == [3, 5, 6, 9, 10]  # loops end at every hook's boundaries


def test_a_resumed_run_evaluates_at_the_steps_still_ahead(tmp_path):
    first, data = make_trainer(tmp_path, total_steps=4, make_model=tiny_detector)
    fit(first, data)
    second, data = make_trainer(tmp_path, total_steps=9, make_model=tiny_detector)
    evaluated = []
    fit(second, data, Evaluation(lambda step: evaluated.append(step) or {}, every_n_steps=3, at_end=False))
    assert evaluated == [6]  # not 3 (before the resume), not 9 (the end, at_end=False)


def test_a_loop_never_runs_past_a_hook_boundary_and_hooks_see_each_loop(tmp_path):
    trainer, data = make_trainer(tmp_path, total_steps=12, make_model=tiny_detector, steps_per_loop=5,
                                 checkpoint_every=1000)
    seen = Seen(every=4)
    summary = trainer.fit(data, [seen])
    assert summary["step"] == 12
    assert seen.calls == [("before", 0), ("loop", 4), ("loop", 8), ("loop", 12), ("after", "done")]


def test_a_stop_request_from_a_hook_ends_the_fit_with_a_checkpoint_and_no_final_evaluation(tmp_path, caplog):
    trainer, data = make_trainer(tmp_path, total_steps=20, make_model=tiny_detector, steps_per_loop=2)
    seen, evaluated = Seen(stop_at=4), []
    summary, _ = fit(trainer, data, seen, Evaluation(lambda step: evaluated.append(step) or {}, at_end=True))
    # the request made after the loop that ended at step 4 is agreed on by the workers after the next loop
    # (the one to step 5, the console log's boundary)
    assert summary["stopped_early"] and summary["step"] == 5
    assert trainer.manager.latest_checkpoint.endswith("ckpt-5")
    assert seen.calls[-1] == ("after", "stopped") and evaluated == []
    assert "stopped by Seen wants to stop at step 5" in caplog.text


def test_sigterm_finishes_the_loop_saves_and_restores_the_previous_handler(tmp_path, caplog):
    class Terminate(Hook):
        def after_loop(self, trainer, step, losses):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    trainer, data = make_trainer(tmp_path, total_steps=20, make_model=tiny_detector, steps_per_loop=2)
    summary, _ = fit(trainer, data, Terminate())
    assert summary["stopped_early"] and summary["step"] == 4
    assert trainer.manager.latest_checkpoint.endswith("ckpt-4")
    assert "stopped by SIGTERM at step 4" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is before


def test_after_a_failure_every_hook_cleans_up_and_the_error_is_the_one_raised(tmp_path):
    class Boom(Hook):
        def after_loop(self, trainer, step, losses):
            raise ValueError("a hook's own error")

    trainer, data = make_trainer(tmp_path, total_steps=6, make_model=tiny_detector, steps_per_loop=2)
    first, last = Seen(fail_in_after_fit=True), Seen()
    with pytest.raises(ValueError, match="a hook's own error"):
        trainer.fit(data, [first, Boom(), last])
    assert first.calls[-1] == ("after", "failed") and last.calls[-1] == ("after", "failed")


def test_without_hooks_the_loop_writes_nothing(tmp_path):
    """What a benchmark runs: the steps alone; no checkpoint, history or TensorBoard file appears."""
    trainer, data = make_trainer(tmp_path / "run", total_steps=4, make_model=tiny_detector, steps_per_loop=2)
    assert trainer.fit(data)["step"] == 4
    assert not os.path.exists(tmp_path / "run" / "checkpoints") or not os.listdir(tmp_path / "run" / "checkpoints")
    assert not (tmp_path / "run" / "train_history.jsonl").exists()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_the_usual_hooks_write_history_tensorboard_and_checkpoints(tmp_path):
    trainer, data = make_trainer(tmp_path / "run", total_steps=10, make_model=tiny_detector, checkpoint_every=5)
    names = [type(hook).__name__ for hook in build_hooks(trainer)]
    assert names == ["StopOnSignal", "History", "ConsoleLog", "PeriodicCheckpoint"]  # progress_bar=False
    fit(trainer, data)
    assert (tmp_path / "run" / "train_history.jsonl").read_text().count("\n") == 2  # steps 5 and 10
    assert os.listdir(tmp_path / "run" / "tensorboard")
    assert sorted(trainer.manager.checkpoints) == sorted(
        os.path.join(str(tmp_path / "run"), "checkpoints", f"ckpt-{n}") for n in (5, 10))


def test_paused_seconds_are_left_out_of_the_training_time(tmp_path):
    trainer, data = make_trainer(tmp_path, total_steps=4, make_model=tiny_detector, steps_per_loop=2)
    slow = Evaluation(lambda step: time.sleep(2.0) or {}, every_n_steps=2, at_end=False)
    started = time.perf_counter()
    summary, _ = fit(trainer, data, slow)
    wall = time.perf_counter() - started
    assert 2.0 <= slow.paused_seconds < 3.0  # one evaluation, at step 2 (not at 4: the end, at_end=False)
    assert summary["seconds"] <= wall - slow.paused_seconds


def test_the_step_timer_marks_the_end_of_the_warm_up_and_of_the_last_loop(tmp_path):
    """What the benchmarks time: the loops after the warm-up, not the iterator's set-up or tear-down."""
    trainer, data = make_trainer(tmp_path, total_steps=7, make_model=tiny_detector, steps_per_loop=5)
    marks = iter(range(100))
    timer = StepTimer(after=2, mark=lambda: next(marks))
    trainer.fit(data, [timer])
    assert timer.start == (2, 0) and timer.end == (7, 1)  # two loops: to the warm-up step, then 5 steps on


def test_the_history_closes_its_tensorboard_writer_and_keeps_only_its_last_entries(tmp_path, closed_writers):

    from effdet.train.hooks import History, read_history

    closed = closed_writers
    trainer, data = make_trainer(tmp_path, total_steps=6, make_model=tiny_detector, steps_per_loop=1)
    history = History(str(tmp_path), keep=3)
    trainer.fit(data, [history])
    assert closed == [True]
    assert [entry["step"] for entry in history.entries] == [4, 5, 6]
    assert [entry["step"] for entry in read_history(str(tmp_path / "train_history.jsonl"))] == [1, 2, 3, 4, 5, 6]


def test_after_an_elastic_reset_the_history_drops_the_steps_trained_again_and_a_new_rank_0_takes_it_over(
        tmp_path, closed_writers):
    """Rank 0 dies after step 6; the others go back to the commit of step 4 and another worker becomes rank 0:
    the history file keeps every step once, and the new rank 0 writes it and TensorBoard from then on."""
    from effdet.train.hooks import History, read_history

    trainer, _ = make_trainer(tmp_path, total_steps=8, make_model=tiny_detector)
    losses = {"total_loss": 1.0, "finite": 1.0}
    lost, survivor = History(str(tmp_path)), History(str(tmp_path))
    for history, rank in ((lost, 0), (survivor, 1)):  # survivor: another worker, which writes nothing
        trainer.workers.rank = rank
        history.before_fit(trainer)
    for step in range(1, 7):
        for history, rank in ((lost, 0), (survivor, 1)):
            trainer.workers.rank = rank
            history.after_loop(trainer, step, losses)
    assert len(closed_writers) == 0
    trainer.workers.rank = 0
    survivor.after_reset(trainer, 4)
    assert [entry["step"] for entry in read_history(str(tmp_path / "train_history.jsonl"))] == [1, 2, 3, 4]
    for step in (5, 6, 7, 8):
        survivor.after_loop(trainer, step, losses)
    survivor.after_fit(trainer, "done")
    lines = (tmp_path / "train_history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, 9))
    assert [entry["step"] for entry in survivor.entries] == list(range(1, 9))
    assert closed_writers == [True] and len(os.listdir(tmp_path / "tensorboard")) == 2  # its own events file


def test_after_an_elastic_reset_the_evaluations_of_weights_trained_again_are_forgotten(tmp_path):
    trainer, _ = make_trainer(tmp_path, total_steps=8, make_model=tiny_detector)
    evaluation = Evaluation(lambda step: {"AP": step}, every_n_steps=2)
    evaluation.results = {2: {"AP": 2}, 4: {"AP": 4}, 6: {"AP": 6}}
    evaluation.after_reset(trainer, 4)
    assert sorted(evaluation.results) == [2, 4] and evaluation.last == {"AP": 4}
