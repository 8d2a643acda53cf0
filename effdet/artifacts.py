"""The names of what a job writes into its run dir (Hydra's output dir), in one place: the modes that write a
file and those that read it (continuous evaluation, resuming, a sweep's summary) agree through these, and a
file is renamed here alone.

Layout of a run dir (rank 0 writes; the other workers write nothing):

    .hydra/                     Hydra's composed config and overrides (run.py)
    run.log                     the job's log (Hydra's, named after run.py)
    run_info.json               how the job was started: command, git commit, versions (provenance.py)
    training_config.yaml        the config the checkpoints were trained with; resuming checks it (provenance.py)
    training_plan.json          {"total_steps", "steps_per_epoch"}, for a continuous evaluation (mode=train)
    checkpoints/                the trainer's checkpoints (model, optimizer, EMA, step)
    train_history.jsonl         one line per logged step: losses, learning rate, speed (trainer)
    tensorboard/                training and evaluation summaries
    train_summary.json          the last training's step, seconds, throughput (mode=train; sweep.py reads it)
    training_curves.png         the history's losses and learning rate, across resumes (mode=train)
    metrics.jsonl               one line per evaluation: COCO metrics and step (evaluation; sweep.py reads it)
    ap_over_steps.png           AP of every evaluation so far
    eval/step_<N>/              one evaluation's metrics.json, detections.json, per_class_ap.csv and
                                val_detections.png (the first eval.num_pictures val images with their boxes)
    data_report.json, .png      mode=check_data's report
    data.json, data_samples.png mode=show_data's summary and picture
    inspect.json                mode=inspect's summary
    detections/                 mode=infer's <image>.json and .png, <video>.jsonl and .annotated.mp4 (unless
                                infer.output_dir)
    saved_model/, model*.tflite mode=export's models (unless export.output_dir), labels.json in the SavedModel,
    model.onnx, model.anchors.npy   the TFLite (float32, _fp16, _int8) and ONNX networks and their anchors
    export_report.md, .json     export.compare's table: size, AP, AP50 and latency of every form written
    hostfile, hcl_config.json   a launch's files for mpirun and Habana's HCL
"""
import os

HYDRA_DIR = ".hydra"
RUN_LOG = "run.log"
RUN_INFO = "run_info.json"
TRAINING_CONFIG = "training_config.yaml"
TRAINING_PLAN = "training_plan.json"
CHECKPOINTS = "checkpoints"
TRAIN_HISTORY = "train_history.jsonl"
TENSORBOARD = "tensorboard"
TRAIN_SUMMARY = "train_summary.json"
TRAINING_CURVES = "training_curves.png"

METRICS = "metrics.jsonl"
AP_OVER_STEPS = "ap_over_steps.png"
EVAL_DIR = "eval"
STEP_METRICS = "metrics.json"  # in eval/step_<N>/
STEP_DETECTIONS = "detections.json"
PER_CLASS_AP = "per_class_ap.csv"
VAL_DETECTIONS = "val_detections.png"

DATA_REPORT_JSON = "data_report.json"
DATA_REPORT_PNG = "data_report.png"
DATA_SUMMARY = "data.json"
DATA_SAMPLES = "data_samples.png"
INSPECT = "inspect.json"
DETECTIONS_DIR = "detections"
SAVED_MODEL = "saved_model"
LABELS = "labels.json"  # in the SavedModel's directory
# mode=export's network files, beside the SavedModel's directory, with the anchors they all decode with
TFLITE = "model.tflite"
TFLITE_FP16 = "model_fp16.tflite"
TFLITE_INT8 = "model_int8.tflite"
TFLITE_FILES = {"none": TFLITE, "float16": TFLITE_FP16, "int8": TFLITE_INT8}  # by export.quantize
ONNX_MODEL = "model.onnx"
ANCHORS = "model.anchors.npy"
EXPORT_REPORT = "export_report.md"  # export.compare's table, and as JSON
EXPORT_REPORT_JSON = "export_report.json"

HOSTFILE = "hostfile"
HCL_CONFIG = "hcl_config.json"

SWEEP_SUMMARY = "summary.csv"  # in a sweep's dir (hydra.sweep.dir), beside its jobs' run dirs


def eval_step_dir(run_dir: str, step: int) -> str:
    """Where one evaluation's details go."""
    return os.path.join(run_dir, EVAL_DIR, f"step_{step}")


def checkpoint_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)
