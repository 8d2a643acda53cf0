"""Elastic training as a user runs it (`python run.py hardware.elastic=true ...`, horovodrun with Gloo on this
machine): a worker killed with SIGKILL mid-run leaves the others to finish the job, and a worker that a discovery
script adds joins it. Every worker runs on its own name for this machine: Horovod Elastic treats a host as the unit
that fails (docs/distributed.md)."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, compose, run_cli

# benchmarks/elastic.py's helpers: this machine's names, the job's worker processes, its history
_spec = importlib.util.spec_from_file_location("elastic_benchmark", os.path.join(REPO, "benchmarks", "elastic.py"))
elastic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(elastic)

TOTAL_STEPS = 28
COMMIT_EVERY = 4


def job_args(tmp_path, run_dir, *more):
    return ["data.synthetic.num_train=16", "data.synthetic.num_val=6", "data.synthetic.image_size=96",
            "model.image_size=64", "model.fpn_num_filters=8", "model.fpn_cell_repeats=1", "model.box_class_repeats=1",
            "trainer.batch_size=2", "trainer.progress_bar=false", f"data.cache_dir={tmp_path / 'cache'}",
            f"trainer.total_steps={TOTAL_STEPS}", "trainer.log_every_n_steps=4", "trainer.checkpoint_every_n_steps=8",
            f"trainer.elastic_commit_every_n_steps={COMMIT_EVERY}", "eval.batch_size=2", "hardware.elastic=true",
            f"hydra.run.dir={run_dir}", *more]


def start(args, log_path):
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOROVOD_")}
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def history(run_dir):
    return elastic.history(str(run_dir))


def wait_for(process, log_path, condition, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the job ended before {what}:\n{log_path.read_text()[-4000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"no {what} in {timeout} s:\n{log_path.read_text()[-4000:]}")


def finish(process, log_path, timeout=400):
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"the job did not end in {timeout} s:\n{log_path.read_text()[-4000:]}")
    output = log_path.read_text()
    assert process.returncode == 0, output[-6000:]
    return output


def worker_of(process, rank):
    """The job's worker that horovodrun started as `rank` (its processes only: other tests may run Horovod workers
    beside it)."""
    pid = elastic.worker_pid(process.pid, rank)
    assert pid is not None, f"no single worker of rank {rank}"
    return pid


def check_history_and_learning_rate(run_dir, overrides, planned_workers):
    """Every step once, and each step's learning rate the schedule's for the workers that trained it: the plan's
    global batch scaled by the workers there were over those planned (the linear rule, as at start)."""
    from effdet.train.builder import build_optimization

    entries = history(run_dir)
    assert [entry["step"] for entry in entries] == list(range(1, TOTAL_STEPS + 1))
    plan = json.loads((run_dir / "training_plan.json").read_text())
    cfg = compose(overrides)
    schedule, _ = build_optimization(cfg.optimizer, cfg.trainer.batch_size * planned_workers, plan["steps_per_epoch"],
                                     plan["total_steps"], False)
    for entry in entries:
        expected = float(schedule(entry["step"])) * entry["workers"] / planned_workers
        assert entry["learning_rate"] == pytest.approx(expected, rel=1e-5, abs=1e-9), entry
    return entries


def test_a_worker_killed_mid_run_leaves_the_others_to_finish_the_job(tmp_path):
    """Three workers, at least two: rank 0 (the one that writes) is killed with SIGKILL after a few steps. The
    other two go back to the last commit and finish the job without a restart: one output dir, every step in the
    history once, at most the commit interval trained again, the learning rate of two workers' global batch,
    the log and checkpoints written on by the new rank 0, and a last checkpoint that evaluates."""
    run_dir = tmp_path / "run"
    names = elastic.local_names(3)
    args = job_args(tmp_path, run_dir, f"hardware.hosts=[{','.join(name + ':1' for name in names)}]",
                    "hardware.min_workers=2")
    log_path = tmp_path / "job.log"
    process = start(args, log_path)
    wait_for(process, log_path, lambda: any(entry["step"] >= 6 for entry in history(run_dir)), "step 6")
    os.kill(worker_of(process, 0), signal.SIGKILL)
    output = finish(process, log_path)

    assert sorted(os.listdir(tmp_path)) == ["cache", "job.log", "run"]  # one output dir
    entries = check_history_and_learning_rate(run_dir, args, planned_workers=3)
    assert entries[0]["workers"] == 3 and entries[-1]["workers"] == 2
    log = (run_dir / "run.log").read_text()
    changed = re.findall(r"workers changed from 3 to 2 at step (\d+) .* from the last commit, step (\d+)", log)
    assert len(changed) == 1, output[-6000:]
    lost_at, committed = map(int, changed[0])
    assert committed % COMMIT_EVERY == 0 and 0 <= lost_at - committed <= COMMIT_EVERY
    assert all(entry["workers"] == 3 for entry in entries if entry["step"] <= committed)
    assert all(entry["workers"] == 2 for entry in entries if entry["step"] > committed)
    # the new rank 0 logged on in the same run.log and wrote the last checkpoints and the evaluation
    assert f"step {TOTAL_STEPS}/{TOTAL_STEPS}" in log and "COCO evaluation at step 28 on 6 images" in log
    checkpoints = os.listdir(run_dir / "checkpoints")
    assert f"ckpt-{TOTAL_STEPS}.index" in checkpoints and f"ckpt-{committed}.index" in checkpoints
    assert json.loads((run_dir / "train_summary.json").read_text())["step"] == TOTAL_STEPS
    # the job's summary, once, from the launching process
    assert output.count("── effdet: mode=train finished") == 1
    evaluated = run_cli(*[arg for arg in args if not arg.startswith(("hardware.", "hydra.run.dir"))], "mode=eval",
                        f"eval.ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"(step {TOTAL_STEPS})" in evaluated.stdout


def test_a_worker_that_the_discovery_script_adds_joins_the_running_job_with_its_state(tmp_path):
    """Two workers, up to three: once the discovery script names a third host, the workers stop at their next
    commit, Horovod starts a worker there, and it takes rank 0's state by broadcast. The job goes on with three:
    every step once, the learning rate of three workers' global batch, and evaluations split over the workers
    there are, every val image evaluated once."""
    run_dir = tmp_path / "run"
    first, second, third = elastic.local_names(3)
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{first}:1\n{second}:1\n")
    script = tmp_path / "discover_hosts.sh"
    script.write_text(f"#!/bin/sh\ncat {hosts}\n")
    script.chmod(0o755)
    args = job_args(tmp_path, run_dir, "mode=train_and_eval", "eval.every_n_epochs=1.75", "hardware.num_workers=2",
                    "hardware.min_workers=2", "hardware.max_workers=3", f"hardware.discovery_script={script}",
                    "hardware.network_interface=lo")
    log_path = tmp_path / "job.log"
    process = start(args, log_path)
    wait_for(process, log_path, lambda: any(entry["step"] >= 4 for entry in history(run_dir)), "step 4")
    hosts.write_text(f"{first}:1\n{second}:1\n{third}:1\n")
    output = finish(process, log_path)

    entries = check_history_and_learning_rate(run_dir, args, planned_workers=2)
    log = (run_dir / "run.log").read_text()
    grown = re.findall(r"workers changed from 2 to 3 at step (\d+) .* from the last commit, step (\d+)", log)
    assert len(grown) == 1, output[-6000:]
    at = int(grown[0][1])
    assert int(grown[0][0]) == at and at % COMMIT_EVERY == 0  # nothing trained again: the commit was just made
    assert [entry["workers"] for entry in entries] == [2] * at + [3] * (TOTAL_STEPS - at)
    # 4 steps an epoch planned (16 images, 2 workers of 2): evaluations at steps 7, 14, 21 and the end
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [7, 14, 21, 28]
    for step in (7, 14, 21, 28):
        assert json.loads((run_dir / "eval" / f"step_{step}" / "metrics.json").read_text())["num_images"] == 6
