"""Host-memory soak of `mode=train_and_eval`: the resident memory of `python run.py` over many evaluations.

    .venv/bin/python benchmarks/soak.py [--evaluations 50] [--steps 2000] [--sample_every 2] [--max_growth 3]
        [--png soak.png] [--override eval.nms=soft ...]

Runs the real entry point, `run.py mode=train_and_eval`, in a child process on a small shapes config (lite0 at
128×128, a small synthetic dataset generated once into data.cache_dir), evaluating every steps / evaluations
steps and at the end. The resident memory of the child (and of any workers it starts: the process tree, from
/proc) is sampled every --sample_every seconds, and once more when each evaluation ends (the metrics line
an evaluation prints last). It prints the memory after the --after'th evaluation (5: by then every allocator
pool and cache has been met) and after the last, each the median of --window evaluations' ends (one sample
swings by tens of MB), the growth between them in MB and %, and the least-squares slope in MB per evaluation,
and draws the curve, with the evaluations marked, as a PNG (its samples beside it as JSON; --from_json
summarizes and draws them again). Exits 1 when the growth is over --max_growth % (or the run failed or
evaluated fewer times than asked).

A run's memory that grows with every evaluation is what Google automl's users met (issues #224, #688, #923:
about 2.7 GB per evaluation). Target: under 3 % between the 5th and the 50th evaluation.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The last thing evaluate_and_record does on rank 0: print(format_metrics(record)).
EVALUATED = re.compile(r"^AP \S+ +AP50 \S+ .*\(step (\d+)\)\s*$")


def rss_kib(pid: int) -> int:
    """VmRSS of one process (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> List[int]:
    """The processes started by `pid`, their children, and so on."""
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_rss_mb(pid: int) -> float:
    return sum(rss_kib(p) for p in [pid, *descendants(pid)]) / 1024


def child_overrides(args, run_dir: str) -> List[str]:
    """The run.py overrides of the soak's job: evaluations every steps / evaluations steps."""
    if args.steps % args.evaluations:
        raise SystemExit(f"--steps {args.steps} is not a multiple of --evaluations {args.evaluations}")
    if args.train_images % args.batch_size:
        raise SystemExit(f"--train_images {args.train_images} is not a multiple of --batch_size {args.batch_size}")
    interval = args.steps // args.evaluations
    steps_per_epoch = args.train_images // args.batch_size
    overrides = [
        "mode=train_and_eval", f"model={args.model}", "data=shapes", f"model.image_size={args.image_size}",
        f"data.synthetic.num_train={args.train_images}", f"data.synthetic.num_val={args.val_images}",
        f"data.synthetic.image_size={args.image_size}", f"trainer.batch_size={args.batch_size}",
        f"trainer.total_steps={args.steps}", f"eval.every_n_epochs={interval / steps_per_epoch!r}",
        f"eval.batch_size={args.eval_batch_size}", f"trainer.log_every_n_steps={interval}",
        f"trainer.checkpoint_every_n_steps={args.steps}", "trainer.progress_bar=false", f"hydra.run.dir={run_dir}"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={args.cache_dir}")
    return overrides + list(args.override)


def soak(args, run_dir: str, echo=print) -> dict:
    """Runs the job, sampling its memory; returns the samples, the evaluations and the growth."""
    command = [sys.executable, os.path.join(REPO, "run.py"), *child_overrides(args, run_dir)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    started = time.monotonic()
    samples, evaluations, tail = [], [], []
    lock = threading.Lock()
    os.makedirs(run_dir, exist_ok=True)
    child_log = open(os.path.join(run_dir, "soak_child.log"), "w")
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)

    def read():
        for line in child.stdout:
            child_log.write(line)
            tail.append(line)
            del tail[:-40]
            match = EVALUATED.match(line.strip())
            if match:
                now, rss = time.monotonic() - started, tree_rss_mb(child.pid)
                with lock:
                    samples.append((now, rss))
                    evaluations.append({"step": int(match.group(1)), "seconds": round(now, 1),
                                        "rss_mb": round(rss, 1)})
                echo(f"evaluation {len(evaluations):3d} at step {match.group(1):>5}: {rss:8.1f} MB "
                     f"after {now / 60:.1f} min")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while child.poll() is None:
        rss = tree_rss_mb(child.pid)
        if rss:
            with lock:
                samples.append((time.monotonic() - started, rss))
        time.sleep(args.sample_every)
    reader.join(timeout=30)
    child_log.close()
    seconds = time.monotonic() - started
    result = {"command": command, "returncode": child.returncode, "seconds": round(seconds, 1),
              "samples": [(round(t, 2), round(r, 1)) for t, r in sorted(samples)], "evaluations": evaluations,
              "steps": args.steps, "expected_evaluations": args.evaluations, "tail": "".join(tail)}
    return summarize(result, args.after, args.window)


def summarize(result: dict, after: int, window: int) -> dict:
    """The growth from the end of evaluation `after` to the end of the last one. A single sample swings by tens
    of MB with what the allocator holds at that instant (the input pipeline's buffers, arenas not yet trimmed),
    so each end is the median of `window` evaluations: the `after`th and the ones following it, and the last."""
    evaluations = result["evaluations"]
    result.update(after=after, window=window)
    if len(evaluations) >= after + window - 1 and len(evaluations) >= window:
        base = statistics.median(e["rss_mb"] for e in evaluations[after - 1:after - 1 + window])
        last = statistics.median(e["rss_mb"] for e in evaluations[-window:])
        result.update(base_mb=base, end_mb=last, growth_mb=round(last - base, 1),
                      growth_percent=round(100 * (last - base) / base, 2),
                      single_growth_mb=round(evaluations[-1]["rss_mb"] - evaluations[after - 1]["rss_mb"], 1),
                      peak_mb=max(r for _, r in result["samples"]), per_evaluation_mb=slope(evaluations[after - 1:]))
    return result


def slope(evaluations: List[dict]) -> Optional[float]:
    """MB per evaluation, least squares over the evaluations given."""
    if len(evaluations) < 2:
        return None
    n = len(evaluations)
    mean_x, mean_y = (n - 1) / 2, sum(e["rss_mb"] for e in evaluations) / n
    covariance = sum((i - mean_x) * (e["rss_mb"] - mean_y) for i, e in enumerate(evaluations))
    return round(covariance / sum((i - mean_x) ** 2 for i in range(n)), 2)


def verdict(result: dict, max_growth: float) -> Optional[str]:
    """Why the soak failed, or None."""
    if result["returncode"] != 0:
        return f"run.py exited with {result['returncode']}:\n{result['tail']}"
    if len(result["evaluations"]) < result["expected_evaluations"]:
        return f"{len(result['evaluations'])} evaluations ended, {result['expected_evaluations']} were asked for"
    if "growth_percent" not in result:
        return f"too few evaluations to measure from the {result['after']}th over {result['window']}"
    if result["growth_percent"] > max_growth:
        return f"resident memory grew {result['growth_percent']:.2f} % (bound {max_growth} %)"
    return None


def plot(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    times, rss = zip(*result["samples"]) if result["samples"] else ((), ())
    axis.plot([t / 60 for t in times], rss, linewidth=1, color="tab:blue", label="resident memory")
    marks = result["evaluations"]
    axis.plot([e["seconds"] / 60 for e in marks], [e["rss_mb"] for e in marks], "o", markersize=3,
              color="tab:orange", label="end of an evaluation")
    if "base_mb" in result:
        base = marks[result["after"] - 1]
        axis.axvline(base["seconds"] / 60, color="grey", linestyle="--", linewidth=0.8)
        axis.axhline(result["base_mb"], color="grey", linestyle=":", linewidth=0.8)
        axis.axhline(result["end_mb"], color="tab:red", linestyle=":", linewidth=0.8)
        title += f"\n{result['growth_mb']:+.1f} MB ({result['growth_percent']:+.2f} %) from evaluation " \
                 f"{result['after']} to {len(marks)} (medians of {result['window']} evaluations at each end)"
    axis.set_xlabel("minutes")
    axis.set_ylabel("MB")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=50, help="evaluations in all, the last at the end")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (a multiple of --evaluations)")
    parser.add_argument("--sample_every", type=float, default=2.0, help="seconds between memory samples")
    parser.add_argument("--after", type=int, default=5, help="growth is measured from the end of this evaluation")
    parser.add_argument("--window", type=int, default=5, help="evaluations whose median is each end's memory")
    parser.add_argument("--max_growth", type=float, default=3.0, help="percent; more fails (exit 1)")
    parser.add_argument("--model", default="efficientdet-lite0")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--train_images", type=int, default=400, help="data.synthetic.num_train")
    parser.add_argument("--val_images", type=int, default=16, help="data.synthetic.num_val: each evaluation's")
    parser.add_argument("--cache_dir", help="data.cache_dir (default: the config's)")
    parser.add_argument("--run_dir", help="the job's run dir (default: a temporary one, removed)")
    parser.add_argument("--png", default="soak.png", help="the curve; its samples go beside it as .json")
    parser.add_argument("--override", action="append", default=[], help="a Hydra override for the job")
    parser.add_argument("--from_json", help="summarize and draw the samples an earlier soak wrote, running nothing")
    args = parser.parse_args()
    if not 1 <= args.after <= args.evaluations - args.window + 1:
        parser.error("--after must be between 1 and --evaluations - --window + 1")

    stem, _ = os.path.splitext(args.png)
    if args.from_json:
        with open(args.from_json) as handle:
            result = summarize(dict(json.load(handle), tail=""), args.after, args.window)
        args.steps, args.evaluations = result["steps"], result["expected_evaluations"]
    else:
        temporary = None if args.run_dir else tempfile.TemporaryDirectory(prefix="soak-")
        run_dir = args.run_dir or temporary.name
        print(f"soak: {args.model} at {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} "
              f"steps, {args.evaluations} evaluations of {args.val_images} images (every "
              f"{args.steps // args.evaluations} steps), run dir {run_dir}", flush=True)
        result = soak(args, run_dir, echo=lambda text: print(text, flush=True))
        if temporary is not None:
            temporary.cleanup()
    if os.path.abspath(stem + ".json") != os.path.abspath(args.from_json or ""):
        with open(stem + ".json", "w") as handle:
            json.dump({key: value for key, value in result.items() if key != "tail"}, handle, indent=1)
    plot(result, args.png, f"run.py mode=train_and_eval: {args.model} {args.image_size}px, batch "
                           f"{args.batch_size}, {args.steps} steps")
    if "base_mb" in result:
        count, window = len(result["evaluations"]), args.window
        print(f"resident memory after evaluation {args.after}: {result['base_mb']:.1f} MB (median of evaluations "
              f"{args.after}-{args.after + window - 1}); after evaluation {count} (step "
              f"{result['evaluations'][-1]['step']}): {result['end_mb']:.1f} MB (median of {count - window + 1}-"
              f"{count}); growth {result['growth_mb']:+.1f} MB ({result['growth_percent']:+.2f} %); single samples "
              f"{result['single_growth_mb']:+.1f} MB; {result['per_evaluation_mb']} MB per evaluation (least "
              f"squares); peak {result['peak_mb']:.1f} MB")
    print(f"{len(result['evaluations'])} evaluations, {args.steps} steps in {result['seconds'] / 60:.1f} min; "
          f"curve: {args.png}")
    problem = verdict(result, args.max_growth)
    print(f"FAIL: {problem}" if problem else f"PASS: growth within {args.max_growth} %")
    sys.exit(1 if problem else 0)


if __name__ == "__main__":
    main()
