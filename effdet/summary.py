"""What a person reads when a job ends: where its run dir is, what in it to open, its final figures, how long it
took, and the commands that take it further with this run's paths filled in.

run.py prints it once per job, from the process that wrote .hydra/: the only process of a one-worker job, the
launcher of a job whose workers it started (after they ended), rank 0 of a job started by an outside mpirun.
Everything comes from the run dir's files (artifacts.py), so it reads the same whichever process ran the mode.
A sweep prints one summary, for its sweep dir (sweep.py).
"""
import datetime
import json
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from effdet import artifacts as names
from effdet.hardware.launch import RUN_PY

# The overrides the next commands repeat: what the checkpoint needs to be rebuilt and read as it was trained
# (model, data and the recipe or experiment that set them) and how its detections are post-processed. Training,
# optimizer and hardware settings do not carry over: eval, infer and export do not train, and infer and export
# run in one process.
CARRIED = ("model", "data", "recipe", "experiment", "eval")
NOT_CARRIED = ("eval.ckpt", "eval.continuous", "eval.testdev_dir", "eval.every_n_epochs", "eval.timeout",
               "eval.min_interval")
# A file or directory of a run dir, and what a person finds in it, in the order they are shown.
SHOWN = (
    (names.CHECKPOINTS, "checkpoints (weights, optimizer, EMA, step)"),
    (names.METRICS, "COCO metrics of every evaluation"),
    ("{val_detections}", "the first val images: detections in colour, ground truth dashed"),
    (names.TRAINING_CURVES, "losses and learning rate over the steps"),
    (names.AP_OVER_STEPS, "AP of every evaluation"),
    ("{detections}", "mode=infer's detections (.json, .jsonl) and annotated images and videos"),
    ("{saved_model}", "the SavedModel, pre- and post-processing inside"),
    (names.TFLITE, "the network as TFLite float32"),
    (names.TFLITE_FP16, "the network as TFLite float16"),
    (names.TFLITE_INT8, "the network as TFLite int8"),
    (names.ONNX_MODEL, "the network as ONNX"),
    (names.EXPORT_REPORT, "size, AP and latency of every exported form"),
    (names.DATA_REPORT_JSON, "the dataset doctor's findings"),
    (names.DATA_REPORT_PNG, "the dataset doctor's charts"),
    (names.DATA_SAMPLES, "augmented training examples with their target boxes"),
    (names.INSPECT, "parameters, FLOPs and anchors"),
    (names.TENSORBOARD, "TensorBoard summaries: losses, metrics, val pictures"),
    (names.RUN_LOG, "this job's log"),
    (names.RUN_INFO, "the command, the git commit, versions, and how to re-run it"),
)
INFER_INPUT = "<images, a directory or a video>"


def carried_overrides(overrides: Sequence[str]) -> List[str]:
    """The job's overrides that a command working on its checkpoint repeats (see CARRIED)."""
    kept = []
    for override in overrides:
        key = override.lstrip("+~").partition("=")[0]
        if key.split(".")[0] in CARRIED and key not in NOT_CARRIED:
            kept.append(override)
    return kept


def python_command() -> List[str]:
    """This interpreter and run.py, as paths from the current directory when they lie below it (.venv/bin/python
    run.py), else absolute: the commands run as printed, from where this job was started."""
    def shown(path):
        relative = os.path.relpath(path)
        return os.path.abspath(path) if relative.startswith("..") else relative

    return [shown(sys.executable), shown(RUN_PY)]


def command(*arguments: str) -> str:
    return shlex.join([*python_command(), *arguments])


def latest_val_pictures(run_dir: str) -> Optional[str]:
    """The val_detections.png of the run dir's latest evaluation."""
    steps = []
    eval_dir = os.path.join(run_dir, names.EVAL_DIR)
    for entry in os.listdir(eval_dir) if os.path.isdir(eval_dir) else ():
        prefix, _, number = entry.partition("_")
        path = os.path.join(eval_dir, entry, names.VAL_DETECTIONS)
        if prefix == "step" and number.isdigit() and os.path.exists(path):
            steps.append((int(number), path))
    return max(steps)[1] if steps else None


def last_record(path: str) -> Optional[Dict[str, Any]]:
    """The last line of a .jsonl file (metrics.jsonl: the latest evaluation), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        lines = [line for line in handle if line.strip()]
    return json.loads(lines[-1]) if lines else None


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(seconds)))


def _shown_path(path: str, run_dir: str) -> str:
    relative = os.path.relpath(path, run_dir)
    return path if relative.startswith("..") else relative + ("/" if os.path.isdir(path) else "")


def artifacts_of(run_dir: str, cfg: Any) -> List[Tuple[str, str]]:
    """(path, what it is) of each file or directory of SHOWN that the run dir holds (or the mode's own output
    dir, for infer and export), relative to the run dir where it lies below it."""
    run_dir = os.path.abspath(run_dir)
    saved_model = cfg.export.output_dir or os.path.join(run_dir, names.SAVED_MODEL)
    placed = {"{val_detections}": latest_val_pictures(run_dir),
              "{detections}": cfg.infer.output_dir or os.path.join(run_dir, names.DETECTIONS_DIR),
              "{saved_model}": saved_model}
    export_dir = os.path.dirname(os.path.abspath(saved_model).rstrip("/"))
    found = []
    for name, what in SHOWN:
        path = placed.get(name, os.path.join(export_dir if name in names.TFLITE_FILES.values() or name in (
            names.ONNX_MODEL, names.EXPORT_REPORT) else run_dir, name))
        if path and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            found.append((_shown_path(os.path.abspath(path), run_dir), what))
    return found


def figures_of(run_dir: str) -> List[str]:
    """The job's final figures: training's steps and speed, the last evaluation's COCO metrics."""
    lines = []
    train = _read_json(os.path.join(run_dir, names.TRAIN_SUMMARY))
    if train:
        stopped = ", stopped early: the same command resumes it" if train.get("stopped_early") else ""
        lines.append(f"trained to step {train['step']} in {_duration(train['seconds'])} "
                     f"({train['images_per_second']:.1f} images/s{stopped})")
    metrics = last_record(os.path.join(run_dir, names.METRICS))
    if metrics:
        # Not the evaluation's own line (`AP … (step N)`): the soak benchmark counts evaluations by that one.
        lines.append(f"last evaluation (step {metrics['step']}): " + "  ".join(
            f"{key} {metrics[key]:.3f}" for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
            if key in metrics))
    return lines


def next_commands(mode: str, run_dir: str, cfg: Any, overrides: Sequence[str]) -> List[str]:
    """What to run next on what this job made, with its paths and model/data overrides filled in."""
    run_dir = os.path.abspath(run_dir)
    carried = carried_overrides(overrides)
    has_checkpoints = os.path.isdir(names.checkpoint_dir(run_dir)) and os.listdir(names.checkpoint_dir(run_dir))
    checkpoint = {"eval": cfg.eval.ckpt or run_dir, "infer": cfg.infer.ckpt, "export": cfg.export.ckpt}.get(
        mode, run_dir if has_checkpoints else None)
    checkpoint = os.path.abspath(os.path.expanduser(str(checkpoint))) if checkpoint else None
    commands = []
    if checkpoint and mode != "eval":
        commands.append(command("mode=eval", f"eval.ckpt={checkpoint}", *carried))
    if checkpoint and mode != "infer":
        commands.append(command("mode=infer", f"infer.ckpt={checkpoint}", f"infer.input={INFER_INPUT}", *carried))
    if checkpoint and mode != "export":
        commands.append(command("mode=export", f"export.ckpt={checkpoint}", *carried))
    if mode == "export":
        export_dir = os.path.dirname(os.path.abspath(cfg.export.output_dir or os.path.join(run_dir,
                                                                                          names.SAVED_MODEL)))
        for quantize, name in names.TFLITE_FILES.items():
            if os.path.exists(os.path.join(export_dir, name)):
                commands.append(command("mode=eval", f"eval.ckpt={checkpoint}", "eval.engine=tflite",
                                        f"eval.tflite_quantize={os.path.join(export_dir, name)}", *carried))
        if os.path.exists(os.path.join(export_dir, names.ONNX_MODEL)):
            commands.append(command("mode=eval", f"eval.ckpt={checkpoint}", "eval.engine=onnxruntime",
                                    f"eval.onnx_file={os.path.join(export_dir, names.ONNX_MODEL)}", *carried))
    if mode in ("check_data", "show_data"):
        commands.append(command(*carried))  # train on what was just looked at
    if os.path.isdir(os.path.join(run_dir, names.TENSORBOARD)):
        commands.append(shlex.join(["tensorboard", "--logdir", os.path.join(run_dir, names.TENSORBOARD)]))
    return commands


def format_block(title: str, where: str, rows: Sequence[Tuple[str, str]], figures: Sequence[str],
                 commands: Sequence[str]) -> str:
    width = max([len(path) for path, _ in rows] + [0])
    lines = ["", f"── {title} " + "─" * max(3, 76 - len(title)), f"run dir  {where}"]
    lines += [f"  {path:<{width}}  {what}" for path, what in rows]
    lines += figures
    if commands:
        lines += ["next:"] + [f"  {line}" for line in commands]
    return "\n".join(lines)


def run_summary(mode: str, run_dir: str, cfg: Any, overrides: Sequence[str], seconds: float) -> str:
    """The end-of-job block for a job of `mode` that wrote into `run_dir` (with `overrides`) in `seconds`."""
    return format_block(f"effdet: mode={mode} finished in {_duration(seconds)}", os.path.abspath(run_dir),
                        artifacts_of(run_dir, cfg), figures_of(run_dir), next_commands(mode, run_dir, cfg, overrides))


def sweep_summary(sweep_dir: str, jobs: Sequence[Tuple[Dict[str, Any], List[str]]], cfg: Any,
                  seconds: float) -> str:
    """The end-of-sweep block: the sweep dir, its summary.csv, the best job's run dir and what to run on it.
    `jobs`: (summary row, the job's overrides) of each job (sweep.py's rows)."""
    sweep_dir = os.path.abspath(sweep_dir)
    rows = [(names.SWEEP_SUMMARY, "one row per job, best AP first above")]
    rows += [(_shown_path(os.path.abspath(row["output_dir"]), sweep_dir), row["overrides"] or "(no overrides)")
             for row, _ in sorted(jobs, key=lambda job: job[0]["job"])]
    scored = [job for job in jobs if job[0]["AP"] != ""]
    figures, commands = [], []
    if scored:
        best, overrides = max(scored, key=lambda job: (job[0]["AP"], -job[0]["job"]))
        figures.append(f"best: job {best['job']}, AP {best['AP']:.3f}, in {os.path.abspath(best['output_dir'])}")
        commands = [line for line in next_commands(cfg.mode, best["output_dir"], cfg, overrides)
                    if not line.startswith("tensorboard")]
    commands.append(shlex.join(["tensorboard", "--logdir", sweep_dir]))  # every job's summaries, side by side
    failed = sum(row["status"] == "failed" for row, _ in jobs)
    title = f"effdet: sweep of {len(jobs)} jobs ({failed} failed) finished in {_duration(seconds)}"
    return format_block(title, sweep_dir, rows, figures, commands).replace("run dir  ", "sweep dir  ", 1)
