"""Scaling of data-parallel training through Horovod: 1 worker on 1 core against 2 workers on 1 core each.

    .venv/bin/python benchmarks/scaling.py [--image_size 256] [--batch_size 4] [--steps 8] [--warmup 2]

EfficientDet-D0 on data=fake (no input cost), fp32, through the same builders as `python run.py`; each worker
is pinned to its own core and runs TensorFlow with one thread. Prints the training throughput of both runs,
the scaling efficiency (2-worker images/s over twice the 1-worker's; target ≥ 90 %) and the time one
all-reduce of all gradients takes (Gloo on localhost), measured alone after training. The workers run with
hardware=cpu's Horovod cycle (20 ms); `--override hardware.horovod_cycle_time_ms=null` gives Horovod's own 1 ms.

Two independent workers side by side, one per core and without Horovod, show what the machine itself allows:
their sum, and the lockstep ceiling, twice the slower one's rate, since synchronous workers wait for the slowest.

For every worker it also prints where a step's wall time went, from the CPU time of its threads (Linux /proc):
the thread TensorFlow runs the step on, all its other threads (Horovod's background and Gloo threads, tf.data,
Python), and the rest, time in which the worker ran nothing (waiting for the other worker or a collective).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(args) -> None:
    """One worker (alone, or one rank under horovodrun): pin to a core, train, time an all-reduce."""
    sys.path.insert(0, REPO)
    from effdet.hardware.ranks import local_rank_from_env

    os.sched_setaffinity(0, {args.first_core + local_rank_from_env()})
    from hydra import compose, initialize_config_dir

    from effdet.config import register_schema, validate
    from effdet.tensorflow_env import choose_onednn

    register_schema()
    overrides = ["model=efficientdet-d0", "data=fake", f"model.image_size={args.image_size}",
                 f"trainer.batch_size={args.batch_size}", "hardware.intra_op_threads=1", "hardware.inter_op_threads=1",
                 f"trainer.total_steps={args.warmup + args.steps}", *args.override]
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    choose_onednn(cfg.hardware.onednn)
    validate(cfg)
    from effdet.hardware import setup_hardware
    from effdet.hardware.horovod_tuning import describe_cycle

    setup_hardware(cfg.hardware)
    import tensorflow as tf

    from effdet.modes.train import build_training
    from effdet.train.hooks import StepTimer

    run_dir = tempfile.mkdtemp(prefix="effdet-scaling-")
    try:
        job = build_training(cfg, run_dir)
        workers = job.workers
        # the only hook: the steps after the warm-up, without checkpoint, log or history writes, and without
        # building or tearing down the input iterator (tf.data may take seconds to stop its threads)
        timer = StepTimer(after=args.warmup, mark=lambda: (thread_cpu_seconds(), time.perf_counter()))
        job.trainer.fit(job.dataset_at, [timer])
        threads = cpu_split(timer.start[1], timer.end[1], args.steps)
        seconds = timer.end[1][1] - timer.start[1][1]

        gradients = [tf.ones_like(v) for v in job.model.trainable_variables]
        reduce = tf.function(workers.average_gradients)
        for _ in range(2):
            [g.numpy() for g in reduce(gradients)]
        workers.barrier()
        started = time.perf_counter()
        for _ in range(args.allreduce_repeats):
            [g.numpy() for g in reduce(gradients)]
        allreduce = (time.perf_counter() - started) / args.allreduce_repeats
        per_rank = workers.gather(threads)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if workers.is_chief:
        print("RESULT " + json.dumps({
            "workers": workers.size, "images_per_second": args.steps * args.batch_size * workers.size / seconds,
            "seconds_per_step": seconds / args.steps, "allreduce_seconds": allreduce, "threads": per_rank,
            "cycle": describe_cycle(),
            "gradient_megabytes": sum(int(g.shape.num_elements()) for g in gradients) * 4 / 2 ** 20}), flush=True)


def lockstep_ceiling(side_by_side: list, one: float) -> float:
    """The most synchronous data parallelism could reach, as a fraction of twice one worker: every step waits for
    the slowest worker, so N workers run at N times the slowest one's rate (here: each core's, measured side by
    side, with the other core busy too); N times the slowest over N times one worker alone."""
    return min(side_by_side) / one


def thread_cpu_seconds() -> dict:
    """CPU seconds (user + system) used so far by each thread of this process, from Linux's /proc."""
    clock_ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
        except OSError:  # the thread ended meanwhile
            continue
        used[tid] = (int(fields[11]) + int(fields[12])) / clock_ticks  # utime, stime
    return used


def cpu_split(start: tuple, end: tuple, steps: int) -> dict:
    """Where one worker's wall time per step went: its busiest thread (the one TensorFlow runs the step on,
    with one thread per pool), all its other threads (Horovod's background and Gloo threads, tf.data, Python),
    and what is left: time in which the worker's core ran nothing of this worker's (waiting)."""
    (before, started), (after, ended) = start, end
    used = sorted((after[tid] - before.get(tid, 0.0) for tid in after), reverse=True)
    compute, others = (used[0] if used else 0.0), sum(used[1:])
    return {"compute": compute / steps, "other_threads": others / steps,
            "waiting": max(0.0, ended - started - compute - others) / steps}


def describe(threads: dict) -> str:
    return (f"compute thread {threads['compute']:.2f} s, other threads {threads['other_threads']:.2f} s, "
            f"waiting {threads['waiting']:.2f} s")


def compare(threads: dict, one: dict) -> str:
    extra = threads["compute"] / one["threads"][0]["compute"] - 1
    return f"{describe(threads)}; the compute thread needs {100 * extra:+.0f} % CPU time per step over 1 worker"


def run(command, label):
    child = subprocess.run(command, capture_output=True, text=True)
    lines = [line.split("RESULT ", 1)[1] for line in child.stdout.splitlines() if "RESULT " in line]
    if child.returncode != 0 or not lines:
        sys.exit(f"{label} failed:\n{child.stdout[-2000:]}\n{child.stderr[-2000:]}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4, help="per worker")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--allreduce_repeats", type=int, default=10)
    parser.add_argument("--first_core", type=int, default=0)
    parser.add_argument("--override", action="append", default=[],
                        help="a Hydra override for both runs, e.g. trainer.steps_per_loop=4")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: measure here
    args = parser.parse_args()
    if args.worker:
        measure(args)
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        sys.exit(f"needs 2 cores, this process may use {len(cores)}")
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    passed = [f"--{key}={getattr(args, key)}" for key in ("image_size", "batch_size", "steps", "warmup",
                                                           "allreduce_repeats")]
    passed += [f"--override={override}" for override in args.override]
    worker = [sys.executable, os.path.abspath(__file__), "--worker", *passed, f"--first_core={args.first_core}"]
    print(f"efficientdet-d0 at {args.image_size}x{args.image_size}, batch {args.batch_size} per worker, data=fake, "
          f"fp32, {args.warmup} warm-up + {args.steps} timed steps; each worker on 1 core, 1 TensorFlow thread"
          + (f"; {' '.join(args.override)}" if args.override else ""))
    one = run(worker, "1 worker")
    print(f"1 worker : {one['images_per_second']:.3f} images/s ({one['seconds_per_step']:.2f} s/step)", flush=True)
    print(f"  per step: {describe(one['threads'][0])}", flush=True)
    # the same worker twice at once on the two cores, without Horovod: what the machine itself allows
    pair = [subprocess.Popen([*worker[:-1], f"--first_core={args.first_core + i}"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]
    alone = [json.loads([line for line in p.communicate()[0].splitlines() if "RESULT " in line][-1].split(
        "RESULT ", 1)[1]) for p in pair]
    side_by_side = sum(r["images_per_second"] for r in alone)
    print(f"2 independent workers side by side, no Horovod: {side_by_side:.3f} images/s "
          f"({100 * side_by_side / (2 * one['images_per_second']):.1f} % of twice one: the machine's own ceiling)",
          flush=True)
    for core, result in enumerate(alone):
        print(f"  core {core} per step: {compare(result['threads'][0], one)}", flush=True)
    lockstep = lockstep_ceiling([r["images_per_second"] for r in alone], one["images_per_second"])
    print(f"  in lockstep the slower core sets the pace: {100 * lockstep:.1f} % of twice one is the most 2 synchronous "
          "workers could reach", flush=True)
    two = run([horovodrun, "-np", "2", "-H", "localhost:2", "--gloo", *worker], "2 workers")
    print(f"2 workers: {two['images_per_second']:.3f} images/s ({two['seconds_per_step']:.2f} s/step)")
    for rank, threads in enumerate(two["threads"]):
        print(f"  rank {rank} per step: {compare(threads, one)}")
    efficiency = two["images_per_second"] / (2 * one["images_per_second"])
    print(f"scaling efficiency: {100 * efficiency:.1f} % (target >= 90 %); {100 * efficiency / lockstep:.1f} % of "
          f"the lockstep ceiling; Horovod's cycle: {two['cycle']}")
    print(f"all-reduce of all gradients ({two['gradient_megabytes']:.1f} MB fp32), alone: "
          f"{1000 * two['allreduce_seconds']:.1f} ms = {100 * two['allreduce_seconds'] / two['seconds_per_step']:.1f} "
          f"% of a step")


if __name__ == "__main__":
    main()
