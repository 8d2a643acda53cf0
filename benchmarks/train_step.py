"""Training speed and peak memory of EfficientDet-D0 at 512×512, batch 8, on data=fake (no input cost), with
and without activation recomputation (trainer.recompute); and the largest batch that trains within a memory
budget.

    .venv/bin/python benchmarks/train_step.py [--configs fp32,bf16,fp32+xla,bf16+xla] [--recompute none,all]
                                              [--steps 10] [--warmup 3]
    .venv/bin/python benchmarks/train_step.py --max_batch_within 8 [--configs fp32] [--recompute none,all]

The default is fp32,bf16 without recomputation. XLA is opt-in: compiling on a 2-core CPU takes minutes (lite0 at
128×128 took 7).

Each measurement runs in a fresh process (so that its peak resident memory is its own), through the same
builders as `python run.py` (effdet.modes.train.build_training). Peak memory is the process's peak resident set
(ru_maxrss): the model, the optimizer, TensorFlow's runtime and every activation kept for the backward pass.

--max_batch_within GB doubles the batch from --batch_size until a try's peak exceeds GB (or the try fails), then
bisects between the last batch that fit and the first that did not. Each try trains --warmup + --steps steps
(default for this search: 1 + 1) in its own process, which stops itself as soon as its memory passes the budget.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = {"fp32": "fp32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def measure(config: str, recompute: str, args) -> dict:
    """In this process: build the model as run.py would, train `warmup` steps (tracing, compiling), then time
    `steps`."""
    sys.path.insert(0, REPO)
    from hydra import compose, initialize_config_dir

    from effdet.config import register_schema, validate
    from effdet.tensorflow_env import choose_onednn

    precision, _, xla = config.partition("+")
    register_schema()
    overrides = [f"model={args.model}", "data=fake", f"model.image_size={args.image_size}",
                 f"trainer.batch_size={args.batch_size}", f"trainer.precision={PRECISIONS[precision]}",
                 f"trainer.xla={'true' if xla else 'false'}", f"trainer.total_steps={args.warmup + args.steps}",
                 f"trainer.recompute={recompute}", *args.override]
    with initialize_config_dir(config_dir=os.path.join(REPO, "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    choose_onednn(cfg.hardware.onednn)  # before TensorFlow loads, as run.py does
    validate(cfg)
    from effdet.hardware import setup_hardware

    setup_hardware(cfg.hardware)
    from effdet.modes.train import build_training
    from effdet.train.hooks import StepTimer

    with tempfile.TemporaryDirectory() as run_dir:
        job = build_training(cfg, run_dir)
        timer = StepTimer(after=args.warmup)  # the only hook: no checkpoint, log or history writes are timed
        started = time.perf_counter()
        job.trainer.fit(job.dataset_at, [timer])
    (_, warm), (_, ended) = timer.start, timer.end
    seconds = ended - warm
    images = args.steps * args.batch_size
    return {"config": config, "recompute": recompute, "batch_size": args.batch_size,
            "images_per_second": round(images / seconds, 2),
            "seconds_per_step": round(seconds / args.steps, 3), "first_steps_seconds": round(warm - started, 1),
            "peak_rss_gb": round(peak_rss_gb(), 2), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def stop_beyond(budget_gb: float, every: float = 0.05) -> None:
    """Ends this process (exit code OVER_BUDGET) as soon as its resident memory passes `budget_gb`: a try that
    does not fit need not run to the end, nor push the machine into swapping or the OOM killer."""
    page = os.sysconf("SC_PAGE_SIZE")

    def watch():
        while True:
            with open("/proc/self/statm") as statm:
                resident = int(statm.read().split()[1]) * page / 2 ** 30
            if resident > budget_gb:
                print(f"OVER {resident:.2f}", flush=True)
                os._exit(OVER_BUDGET)
            time.sleep(every)

    threading.Thread(target=watch, daemon=True).start()


OVER_BUDGET = 3


def run_one(config: str, recompute: str, args, batch_size: int = None, steps: int = None, warmup: int = None,
            budget: float = None) -> dict:
    """One measurement in a fresh process: its result, or {"error": ...}, or {"over_budget": GB}."""
    values = dict(model=args.model, image_size=args.image_size, batch_size=batch_size or args.batch_size,
                  steps=steps or args.steps, warmup=warmup or args.warmup)
    passed = [f"--{key}={value}" for key, value in values.items()]
    passed += [f"--override={override}" for override in args.override]
    if budget:
        passed.append(f"--budget={budget}")
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", f"{config}/{recompute}", *passed],
                           capture_output=True, text=True)
    if child.returncode == OVER_BUDGET:
        over = [line for line in child.stdout.splitlines() if line.startswith("OVER ")]
        return {"over_budget": float(over[-1].split()[1]) if over else budget}
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode != 0 or not lines:
        last = (child.stderr.strip().splitlines() or [f"exit code {child.returncode}"])[-1]
        return {"error": last}
    return json.loads(lines[-1][len("RESULT "):])


def largest_batch_within(budget: float, config: str, recompute: str, args) -> tuple:
    """(largest batch whose try peaked within `budget` GB or None, {batch: peak GB or None for a failed try})."""
    steps, warmup = args.steps if args.steps_given else 1, args.warmup if args.warmup_given else 1
    tried = {}

    def fits(batch: int) -> bool:
        result = run_one(config, recompute, args, batch, steps, warmup, budget)
        peak = result.get("peak_rss_gb", result.get("over_budget"))
        tried[batch] = peak
        ok = "peak_rss_gb" in result and result["peak_rss_gb"] <= budget
        why = f"{peak:.2f} GB" if peak is not None else result.get("error", "failed")
        print(f"  {config}/{recompute} batch {batch:>4}: {why} {'fits' if ok else 'does not fit'}", flush=True)
        return ok

    low, high = None, args.batch_size
    while fits(high):  # doubling: the first batch that does not fit bounds the search
        low, high = high, high * 2
    if low is None:  # the starting batch does not fit: search below it
        low, high = 0, high
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return (low or None), tried


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="fp32,bf16",
                        help="comma-separated precision[+xla], precision one of " + ", ".join(PRECISIONS))
    parser.add_argument("--recompute", default="none", help="comma-separated trainer.recompute values")
    parser.add_argument("--model", default="efficientdet-d0")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8, help="the batch, or where --max_batch_within starts")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--max_batch_within", type=float, metavar="GB",
                        help="find the largest batch whose peak resident memory stays within GB")
    parser.add_argument("--override", action="append", default=[],
                        help="a Hydra override for every config, e.g. --override hardware.malloc_tuning=false")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config/recompute in this process
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)  # internal: stop beyond this many GB
    args = parser.parse_args()
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    args.steps = args.steps or 10
    args.warmup = args.warmup or 3
    if args.one:
        if args.budget:
            stop_beyond(args.budget)
        config, _, recompute = args.one.partition("/")
        print("RESULT " + json.dumps(measure(config, recompute or "none", args)), flush=True)
        return

    cores = len(os.sched_getaffinity(0))
    pairs = [(c, r) for c in args.configs.split(",") for r in args.recompute.split(",")]
    if args.max_batch_within:
        print(f"{args.model} at {args.image_size}x{args.image_size}, data=fake, {cores} cores: the largest batch "
              f"within {args.max_batch_within:g} GB peak resident memory, from batch {args.batch_size}")
        found = {}
        for config, recompute in pairs:
            found[config, recompute] = largest_batch_within(args.max_batch_within, config, recompute, args)[0]
        for (config, recompute), batch in found.items():
            print(f"{config:<10} recompute={recompute:<9} largest batch within {args.max_batch_within:g} GB: "
                  f"{batch if batch else 'none (the starting batch does not fit either)'}")
        return

    print(f"{args.model} at {args.image_size}x{args.image_size}, batch {args.batch_size}, data=fake, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {cores} cores")
    print(f"{'config':<10} {'recompute':<9} {'images/s':>9} {'s/step':>7} {'warm-up s':>10} {'peak RSS GB':>12} "
          f"{'oneDNN':>7}")
    for config, recompute in pairs:
        r = run_one(config, recompute, args)
        if "error" in r:
            print(f"{config:<10} {recompute:<9} failed: {r['error']}")
            continue
        print(f"{config:<10} {recompute:<9} {r['images_per_second']:>9.2f} {r['seconds_per_step']:>7.2f} "
              f"{r['first_steps_seconds']:>10.1f} {r['peak_rss_gb']:>12.2f} {'on' if r['onednn'] else 'off':>7}",
              flush=True)
    print("reference: automl Keras D0 fp32 2.6 images/s, 8.2 GB peak; targets: >= 4 images/s fp32, <= 4 GB")


if __name__ == "__main__":
    main()
