"""The seed's command line, translated: `python -m effdet.legacy <main.py flags>` prints the equivalent
`python run.py <overrides>` and runs it (`--print_only`: prints it and stops).

    python -m effdet.legacy --mode=train --model_name=efficientdet-d0 --train_batch_size=8 --num_epochs=300 \\
        --training_file_pattern=/data/coco/train-* --model_dir=/runs/d0 --use_horovod 8 --hls_type HLS1

Flags are read as the seed read them (absl): `--flag=value`, `--flag value`, `--flag` / `--noflag` for booleans.
Like the seed, a job runs on Gaudi unless `--no_hpu` is given. TPU flags are refused with a one-line reason.
"""
import os
import shlex
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from effdet.errors import ConfigError, closest
from effdet.hardware.launch import RUN_PY


def _same(key: str) -> Callable[[str], List[str]]:
    return lambda value: [f"{key}={value}"]


def _switch(*keys: str) -> Callable[[str], List[str]]:
    return lambda value: [f"{key}={value}" for key in keys]


def _mode(value: str) -> List[str]:
    if value not in ("train", "eval", "train_and_eval"):
        raise ConfigError(f"--mode={value}: the seed's modes are train, eval and train_and_eval")
    # the seed's eval mode followed model_dir's checkpoints until --eval_timeout: continuous evaluation here
    return ["mode=eval", "eval.continuous=true"] if value == "eval" else [f"mode={value}"]


def _dataset_dir(value: str) -> List[str]:
    return [f"data.train_file_pattern={os.path.join(value, 'train-*')}",
            f"data.val_file_pattern={os.path.join(value, 'val-*')}"]


# flags that set one key to their value: flag, key (train_batch_size is per worker, as the seed's Horovod runs
# used it; use_horovod N: N workers)
ONE_KEY = dict(line.split() for line in """
    train_batch_size         trainer.batch_size
    eval_batch_size          eval.batch_size
    num_epochs               trainer.num_epochs
    num_examples_per_epoch   data.num_examples_per_epoch
    training_file_pattern    data.train_file_pattern
    validation_file_pattern  data.val_file_pattern
    val_json_file            data.val_json_file
    testdev_dir              eval.testdev_dir
    model_dir                hydra.run.dir
    backbone_ckpt            trainer.backbone_ckpt
    ckpt                     trainer.ckpt
    cp_every_n_steps         trainer.checkpoint_every_n_steps
    keep_checkpoint_max      trainer.keep_checkpoint_max
    log_every_n_steps        trainer.log_every_n_steps
    iterations_per_loop      trainer.steps_per_loop
    eval_after_training      trainer.eval_after_training
    eval_samples             eval.samples
    eval_timeout             eval.timeout
    min_eval_interval        eval.min_interval
    use_xla                  trainer.xla
    use_horovod              hardware.num_workers
""".strip().splitlines())
# flags with their own translation; None: resolved in translate() (they depend on the device)
OWN_WAY = {
    "mode": _mode, "model_name": lambda value: [f"model={value}"], "dataset_dir": _dataset_dir,
    "use_amp": None, "use_fake_data": lambda value: ["data=fake"] if value == "true" else [],
    "deterministic": _switch("trainer.deterministic", "data.deterministic"), "no_hpu": None, "hls_type": None,
    "kubernetes_run": lambda value: ["hardware.launcher=none"] if value == "true" else [], "hparams": None,
}
BOOLEAN_FLAGS = {"eval_after_training", "use_amp", "use_xla", "use_fake_data", "deterministic", "no_hpu",
                 "kubernetes_run"}
# flag → (boolean?, its overrides); the README's table is this one
FLAGS: Dict[str, Tuple[bool, Optional[Callable[[str], List[str]]]]] = {
    flag: (flag in BOOLEAN_FLAGS, translation)
    for flag, translation in [*((flag, _same(key)) for flag, key in ONE_KEY.items()), *OWN_WAY.items()]}
TPU_FLAGS = ("tpu", "gcp_project", "tpu_zone", "eval_master", "use_tpu", "num_cores", "num_cores_per_replica",
             "use_spatial_partition", "input_partition_dims", "transpose_input", "strategy", "tpu_job_name")
HLS_TYPES = {"HLS1": "hls1", "HLS1-H": "hls1h"}
# automl's hparams (the seed's --hparams k=v,...) → this project's keys
HPARAMS = {
    "image_size": "model.image_size", "num_classes": "data.num_classes", "backbone_name": "model.backbone",
    "learning_rate": "optimizer.lr", "lr_warmup_init": "optimizer.lr_warmup_init",
    "lr_warmup_epoch": "optimizer.lr_warmup_epoch", "momentum": "optimizer.momentum",
    "weight_decay": "trainer.weight_decay", "moving_average_decay": "trainer.ema_decay",
    "clip_gradients_norm": "trainer.clip_gradient_norm", "alpha": "trainer.loss.alpha",
    "gamma": "trainer.loss.gamma", "delta": "trainer.loss.delta", "box_loss_weight": "trainer.loss.box_loss_weight",
    "label_smoothing": "trainer.loss.label_smoothing", "iou_loss_type": "trainer.loss.iou_loss_type",
    "iou_loss_weight": "trainer.loss.iou_loss_weight", "anchor_scale": "model.anchor_scale",
    "num_scales": "model.num_scales", "aspect_ratios": "model.aspect_ratios", "min_level": "model.min_level",
    "max_level": "model.max_level", "fpn_num_filters": "model.fpn_num_filters",
    "fpn_cell_repeats": "model.fpn_cell_repeats", "box_class_repeats": "model.box_class_repeats",
    "fpn_weight_method": "model.fpn_weight_method", "act_type": "model.act_type",
    "drop_connect_rate": "model.backbone_drop_connect_rate", "survival_prob": "model.head_survival_prob",
    "autoaugment_policy": "data.autoaugment_policy", "grid_mask": "data.grid_mask",
    "max_instances_per_image": "data.max_instances_per_image", "jitter_min": "data.jitter_min",
    "jitter_max": "data.jitter_max",
    "nms_configs.method": "eval.nms", "nms_configs.iou_thresh": "eval.iou_threshold",
    "nms_configs.sigma": "eval.soft_nms_sigma", "nms_configs.score_thresh": "eval.score_threshold",
    "nms_configs.max_output_size": "eval.max_detections", "lr_decay_method": "optimizer.schedule",
    "grad_checkpoint": "trainer.recompute",
}


def parse_flags(argv: Sequence[str]) -> Dict[str, str]:
    """absl-style flags → {name: value}; booleans become 'true' / 'false'."""
    flags, args = {}, list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError(f"'{arg}' is not a flag: write --name=value (the seed's main.py flags)")
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in TPU_FLAGS:
            raise ConfigError(f"--{name}: a TPU flag, which has no meaning here (this project runs on CPUs, GPUs and "
                              "Gaudi through Horovod); drop it")
        boolean_off = name.startswith("no") and FLAGS.get(name[2:], (False,))[0] and name != "no_hpu"
        known = name[2:] if boolean_off else name
        if known not in FLAGS:
            guess = closest(known, list(FLAGS) + ["no" + f for f, (is_bool, _) in FLAGS.items() if is_bool])
            raise ConfigError(f"--{name} is not one of the seed's flags that this front door knows"
                              + (f"; did you mean --{guess}?" if guess else "") + " (README: 'The seed's flags')")
        is_bool = FLAGS[known][0]
        if boolean_off:
            value = "false"
        elif is_bool:
            value = _boolean(name, value) if has_value else "true"
        elif not has_value:
            if not args or args[0].startswith("--"):
                raise ConfigError(f"--{name} needs a value: --{name}=VALUE")
            value = args.pop(0)
        flags[known] = value
    return flags


def _boolean(name: str, value: str) -> str:
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return "true"
    if lowered in ("false", "0", "no"):
        return "false"
    raise ConfigError(f"--{name}={value}: a boolean flag takes true or false")


def translate(argv: Sequence[str]) -> List[str]:
    """The seed's flags → the equivalent run.py overrides, in a stable order."""
    flags = parse_flags(argv)
    on_hpu = flags.get("no_hpu") != "true"
    hls_type = flags.get("hls_type", "HLS1")
    if hls_type not in HLS_TYPES:
        raise ConfigError(f"--hls_type={hls_type}: choose one of {', '.join(HLS_TYPES)}")
    device = HLS_TYPES[hls_type] if on_hpu else "cpu"
    overrides = [f"hardware={device}"]
    if on_hpu:  # the seed ran one worker unless --use_horovod said how many
        overrides.append(f"hardware.num_workers={flags.get('use_horovod', 1)}")
    for name, value in flags.items():
        handler = FLAGS[name][1]
        if name == "use_horovod" and on_hpu:
            continue
        if handler is not None:
            overrides += handler(value)
        elif name == "use_amp" and value == "true":
            overrides.append(f"trainer.precision={'mixed_bfloat16' if on_hpu else 'mixed_float16'}")
        elif name == "hparams":
            overrides += translate_hparams(value)
    return overrides


def translate_hparams(text: str) -> List[str]:
    overrides = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, has_value, value = item.partition("=")
        if not has_value:
            raise ConfigError(f"--hparams: '{item}' is not key=value")
        if key not in HPARAMS:
            guess = closest(key, HPARAMS)
            raise ConfigError(f"--hparams: '{key}' has no equivalent here" + (f"; did you mean '{guess}'?" if guess
                                                                                else "")
                              + f". Known: {', '.join(sorted(HPARAMS))}. Pass run.py overrides instead")
        if key == "nms_configs.method":  # automl's names for its two methods
            value = {"gaussian": "soft", "hard": "hard"}.get(value, value)
        if key == "grad_checkpoint":  # automl recomputes its EfficientNet blocks
            value = {"true": "backbone", "false": "none"}.get(value.lower(), value)
        overrides.append(f"{HPARAMS[key]}={value}")
    return overrides


def command(overrides: Sequence[str]) -> List[str]:
    return [sys.executable, RUN_PY, *overrides]


def main(argv: Sequence[str]) -> int:
    print_only = "--print_only" in argv
    try:
        overrides = translate([arg for arg in argv if arg != "--print_only"])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("python run.py " + shlex.join(overrides), flush=True)
    if print_only:
        return 0
    return subprocess.run(command(overrides)).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
