"""Training speed and peak memory of EfficientDet-D0 at 512×512, batch 8, on data=fake (no input cost).

    .venv/bin/python benchmarks/train_step.py [--configs fp32,bf16,fp32+xla,bf16+xla] [--steps 10] [--warmup 3]

The default is fp32,bf16. XLA is opt-in: compiling on a 2-core CPU takes minutes (lite0 at 128×128 took 7).

Each configuration runs in a fresh process (so that its peak resident memory is its own), through the same
builders as `python run.py` (effdet.modes.train.build_training). Reference on the 2-core machine: Google automl's
Keras D0 trains at 2.6 images/s with 8.2 GB peak memory in fp32 at this batch. Targets: ≥ 4 images/s (fp32),
≤ 4 GB peak.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = {"fp32": "fp32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def measure(config: str, args) -> dict:
    """In this process: build D0 as run.py would, train `warmup` steps (tracing, compiling), then time `steps`."""
    sys.path.insert(0, REPO)
    from hydra import compose, initialize_config_dir

    from effdet.config import register_schema, validate
    from effdet.tensorflow_env import choose_onednn

    precision, _, xla = config.partition("+")
    register_schema()
    overrides = [f"model={args.model}", "data=fake", f"model.image_size={args.image_size}",
                 f"trainer.batch_size={args.batch_size}", f"trainer.precision={PRECISIONS[precision]}",
                 f"trainer.xla={'true' if xla else 'false'}", f"trainer.total_steps={args.warmup + args.steps}",
                 *args.override]
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
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    images = args.steps * args.batch_size
    return {"config": config, "images_per_second": round(images / seconds, 2),
            "seconds_per_step": round(seconds / args.steps, 3), "first_steps_seconds": round(warm - started, 1),
            "peak_rss_gb": round(peak_kib / 2 ** 20, 2),
            "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "1"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="fp32,bf16",
                        help="comma-separated precision[+xla], precision one of " + ", ".join(PRECISIONS))
    parser.add_argument("--model", default="efficientdet-d0")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--override", action="append", default=[],
                        help="a Hydra override for every config, e.g. --override hardware.malloc_tuning=false")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one config in this process
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args)), flush=True)
        return

    cores = len(os.sched_getaffinity(0))
    print(f"{args.model} at {args.image_size}x{args.image_size}, batch {args.batch_size}, data=fake, "
          f"{args.warmup} warm-up + {args.steps} timed steps, {cores} cores")
    print(f"{'config':<10} {'images/s':>9} {'s/step':>7} {'warm-up s':>10} {'peak RSS GB':>12} {'oneDNN':>7}")
    for config in args.configs.split(","):
        passed = [f"--{key}={getattr(args, key)}" for key in ("model", "image_size", "batch_size", "steps", "warmup")]
        passed += [f"--override={override}" for override in args.override]
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", config, *passed],
                               capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            print(f"{config:<10} failed: {(child.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        r = json.loads(lines[-1][len("RESULT "):])
        print(f"{config:<10} {r['images_per_second']:>9.2f} {r['seconds_per_step']:>7.2f} "
              f"{r['first_steps_seconds']:>10.1f} {r['peak_rss_gb']:>12.2f} {'on' if r['onednn'] else 'off':>7}",
              flush=True)
    print("reference: automl Keras D0 fp32 2.6 images/s, 8.2 GB peak; targets: >= 4 images/s fp32, <= 4 GB")


if __name__ == "__main__":
    main()
