"""Recovery of an elastic job (hardware.elastic) from a worker killed mid-run: how long from the kill to the first
step of the smaller group, how many steps were trained again, and the speed before and after.

    .venv/bin/python benchmarks/elastic.py [--workers 3] [--min_workers 2] [--kill_at 65] [--kill_rank 1]
        [--total_steps 150] [--commit_every 10] [--model efficientdet-lite0] [--image_size 128] [--batch_size 4]
        [--runs 1] [--keep DIR] [--override hardware.collective_timeout=10 ...]

Runs `python run.py mode=train hardware.elastic=true` on the synthetic shapes dataset, its workers on as many of
this machine's names (localhost, 127.0.0.1, its host name, ...), since Horovod Elastic counts each name as a host.
Once the history holds --kill_at, the worker that horovodrun started as --kill_rank is killed with SIGKILL. The
script watches train_history.jsonl (every 20 ms) and reads rank 0's reset line in run.log:

- kill → first step: from the kill to the history's first line of a step trained by the smaller group (the end
  of that step: the survivors noticing the loss, Horovod forming the group, the input re-sharded, one step);
- steps trained again: from the step the loss was noticed at back to the last commit (at most --commit_every);
- images/s before and after: over the steps between the first log after --warmup and the kill, and from two
  steps after the reset to the end, from the times the history lines appeared.

All workers share this machine's cores, so its absolute figures say little about a cluster's; the recovery time
and the steps lost are what it measures.
"""
import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_description  # noqa: E402  (benchmarks/machine.py)

RESET = re.compile(r"workers changed from (\d+) to (\d+) at step (\d+) .* from the last commit, step (\d+)")


def local_names(count: int) -> List[str]:
    """`count` different names that all resolve to this machine (Horovod Elastic counts each as a host)."""
    from effdet.hardware.launch import is_this_machine

    candidates = ["localhost", "127.0.0.1", socket.gethostname(), "LOCALHOST", "Localhost", "localhost.localdomain"]
    names = []
    for name in candidates:
        if name not in names and is_this_machine(name):
            names.append(name)
    if len(names) < count:
        raise SystemExit(f"this machine answers to only {names}; {count} workers need {count} names for it")
    return names[:count]


def worker_pid(job_pid: int, rank: int) -> Optional[int]:
    """The pid of the worker that horovodrun started as `rank` among `job_pid`'s descendants, or None."""
    children: Dict[int, List[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as handle:
                children.setdefault(int(handle.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    todo, found = [job_pid], []
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                with open(f"/proc/{child}/environ", "rb") as handle:
                    environment = dict(item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item)
                with open(f"/proc/{child}/cmdline", "rb") as handle:
                    command = handle.read().split(b"\0")
            except OSError:
                continue
            if environment.get(b"HOROVOD_RANK") == str(rank).encode() and command[0].endswith(b"python") \
                    and any(part.endswith(b"run.py") for part in command):
                found.append(child)
    return found[0] if len(found) == 1 else None


def history(run_dir: str) -> List[dict]:
    path = os.path.join(run_dir, "train_history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip().endswith("}")]


def images_per_second(times: Dict[int, float], first: int, last: int, images_per_step: int) -> Optional[float]:
    if first not in times or last not in times or last <= first:
        return None
    return (last - first) * images_per_step / (times[last] - times[first])


def run(args, run_dir: str) -> dict:
    names = local_names(args.workers)
    overrides = [
        "data=shapes", f"model={args.model}", f"model.image_size={args.image_size}",
        f"data.synthetic.image_size={args.image_size}", f"trainer.batch_size={args.batch_size}",
        f"trainer.total_steps={args.total_steps}", "trainer.log_every_n_steps=1000", "trainer.progress_bar=false",
        "trainer.eval_after_training=false", f"trainer.checkpoint_every_n_steps={args.total_steps}",
        f"trainer.elastic_commit_every_n_steps={args.commit_every}", "hardware.elastic=true",
        f"hardware.hosts=[{','.join(name + ':1' for name in names)}]", f"hardware.min_workers={args.min_workers}",
        f"hydra.run.dir={run_dir}", *args.override]
    environment = {name: value for name, value in os.environ.items() if not name.startswith("HOROVOD_")}
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    log_path = run_dir + ".log"
    with open(log_path, "w") as log:
        job = subprocess.Popen([sys.executable, os.path.join(REPO, "run.py"), *overrides], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, env=environment, start_new_session=True)
    appeared: Dict[int, float] = {}  # step → when its history line was first seen
    workers_of: Dict[int, int] = {}
    killed_at = kill_step = None
    while job.poll() is None:
        now = time.monotonic()
        for entry in history(run_dir):
            if workers_of.get(entry["step"]) != entry["workers"]:  # new, or trained again by another group
                appeared[entry["step"]], workers_of[entry["step"]] = now, entry["workers"]
        if killed_at is None and appeared and max(appeared) >= args.kill_at:
            victim = worker_pid(job.pid, args.kill_rank)
            if victim is None:
                os.killpg(job.pid, signal.SIGKILL)
                raise SystemExit(f"no worker of rank {args.kill_rank} found")
            kill_step, killed_at = max(appeared), time.monotonic()
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.02)
    with open(log_path) as handle:
        output = handle.read()
    if job.returncode != 0 or killed_at is None:
        raise SystemExit(f"the job failed or ended before the kill (exit {job.returncode}):\n{output[-4000:]}")
    with open(os.path.join(run_dir, "run.log")) as handle:
        reset = RESET.search(handle.read())
    if reset is None:
        raise SystemExit(f"no reset in run.log:\n{output[-4000:]}")
    before, after, noticed_at, committed = map(int, reset.groups())
    smaller = sorted(step for step, count in workers_of.items() if count == after)
    first_after = smaller[0]
    return {
        "names": names, "kill_step": kill_step, "noticed_at_step": noticed_at, "committed_step": committed,
        "steps_trained_again": noticed_at - committed, "workers": (before, after),
        "kill_to_first_step_s": round(appeared[first_after] - killed_at, 2),
        "images_per_second_before": images_per_second(appeared, args.warmup, kill_step, args.batch_size * before),
        "images_per_second_after": images_per_second(appeared, first_after + 2, args.total_steps,
                                                     args.batch_size * after),
        "steps_once": sorted(entry["step"] for entry in history(run_dir)) == list(range(1, args.total_steps + 1)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--min_workers", type=int, default=2)
    parser.add_argument("--kill_at", type=int, default=65, help="kill once the history holds this step")
    parser.add_argument("--kill_rank", type=int, default=1, help="the rank horovodrun started the victim as")
    parser.add_argument("--total_steps", type=int, default=150)
    parser.add_argument("--commit_every", type=int, default=10, help="trainer.elastic_commit_every_n_steps")
    parser.add_argument("--warmup", type=int, default=30, help="steps left out of the speed before the kill")
    parser.add_argument("--model", default="efficientdet-lite0")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--keep", help="a dir to keep each run's run dir and log in (default: removed)")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for the job")
    args = parser.parse_args()
    print(f"machine: {cpu_description(('avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile'))}", flush=True)
    for index in range(args.runs):
        if args.keep:
            result = run(args, os.path.join(os.path.abspath(args.keep), f"run{index + 1}"))
        else:
            with tempfile.TemporaryDirectory(prefix="elastic-") as scratch:
                result = run(args, os.path.join(scratch, "run"))
        speed = [f"{value:.1f}" if value else "?" for value in (result["images_per_second_before"],
                                                               result["images_per_second_after"])]
        before, after = result["workers"]
        print(f"run {index + 1}: {before} → {after} workers (killed rank {args.kill_rank} at step "
              f"{result['kill_step']}, noticed at {result['noticed_at_step']}); kill → first step on {after}: "
              f"{result['kill_to_first_step_s']} s; steps trained again: "
              f"{result['steps_trained_again']} (commit every {args.commit_every}); images/s before {speed[0]}, "
              f"after {speed[1]}; every step once in the history: {result['steps_once']}", flush=True)


if __name__ == "__main__":
    main()
