"""The typed schema of a job's config. Hydra checks types on every merge; `validate` checks ranges.

Every default lives here, and only here: a group's file (conf/model/*.yaml, ...) holds what identifies its
option or differs from these, and a class whose argument mirrors a key takes its default with `default_of`
(tests/config/test_defaults.py holds both to it). A key a group file adds that is not here is an error.
Ranges are in each field's metadata ({"min": ...} / {"max": ...}); a name field says which registry
knows its valid values ({"registry": "module:NAME"}), a choice field which module lists them
({"choices": "module:NAME"}, the list its code checks against); both are imported only when validating.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


def positive(default, **metadata):
    return field(default=default, metadata={"min": 1, **metadata})


def non_negative(default, **metadata):
    return field(default=default, metadata={"min": 0, **metadata})


def registered(default, registry: str):
    return field(default=default, metadata={"registry": registry})


def fraction(default):
    return field(default=default, metadata={"min": 0.0, "max": 1.0})


def one_of(default, choices, or_path: Optional[str] = None, many: bool = False):
    """A field whose value is one of `choices`: "module:NAME" of the list that the code using it checks, or the
    list itself when no module has one. `or_path`: a path ending so is valid too; `many`: a list of choices is
    too."""
    metadata = {"choices": choices}
    if or_path:
        metadata["or_path"] = or_path
    if many:
        metadata["many"] = True
    return field(default=default, metadata=metadata)


def default_of(schema: type, name: str) -> Any:
    """The default of `schema.name`: for a class or function argument that mirrors that config key, so that
    the schema stays the one home of the value (a list default comes back as a tuple)."""
    for spec in dataclasses.fields(schema):
        if spec.name == name:
            if spec.default_factory is not dataclasses.MISSING:
                value = spec.default_factory()
                return tuple(value) if isinstance(value, list) else value
            if spec.default is MISSING or spec.default is dataclasses.MISSING:
                raise ValueError(f"{schema.__name__}.{name} has no default")
            return spec.default
    raise KeyError(f"{schema.__name__} has no field {name!r}: its fields are "
                   f"{', '.join(f.name for f in dataclasses.fields(schema))}")


PRECISIONS = "effdet.train.builder:PRECISION_POLICIES"


@dataclass
class BatchNormConfig:
    # batch_norm | sync_batch_norm (moments over all Horovod workers)
    kind: str = registered("batch_norm", "effdet.model:NORMALIZATIONS")
    momentum: float = fraction(0.99)
    epsilon: float = field(default=1e-3, metadata={"min": 0.0})


@dataclass
class ModelConfig:
    name: str = MISSING
    backbone: str = registered(MISSING, "effdet.model:BACKBONES")
    image_size: int = positive(512)
    min_level: int = field(default=3, metadata={"min": 1, "max": 5})
    max_level: int = field(default=7, metadata={"min": 5, "max": 10})
    fpn_num_filters: int = positive(64)
    fpn_cell_repeats: int = positive(3)
    box_class_repeats: int = positive(3)
    fpn_weight_method: str = registered("fastattn", "effdet.model:FUSIONS")
    anchor_scale: float = field(default=4.0, metadata={"min": 0.0})
    num_scales: int = positive(3)
    aspect_ratios: List[float] = field(default_factory=lambda: [1.0, 2.0, 0.5])
    act_type: str = registered("swish", "effdet.model:ACTIVATIONS")
    mean_rgb: List[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    stddev_rgb: List[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    batch_norm: BatchNormConfig = field(default_factory=BatchNormConfig)
    backbone_drop_connect_rate: float = fraction(0.2)
    head_survival_prob: float = fraction(1.0)


@dataclass
class SyntheticConfig:
    """data=shapes: what to generate (a new seed or size is a new dataset in the cache)."""

    seed: int = non_negative(0)
    num_train: int = positive(1600)
    num_val: int = positive(200)
    image_size: int = field(default=320, metadata={"min": 32})
    num_shards: int = positive(4)


@dataclass
class DataConfig:
    name: str = MISSING
    kind: str = registered(MISSING, "effdet.data.sources:DATASETS")  # tfrecord | shapes | fake
    num_classes: int = positive(MISSING)
    train_file_pattern: Optional[str] = None
    val_file_pattern: Optional[str] = None
    val_json_file: Optional[str] = None  # COCO-format ground truth of the val split
    label_map_file: Optional[str] = None  # default: label_map.json next to the shards
    num_examples_per_epoch: Optional[int] = positive(None)  # default: counted from the shards
    cache_dir: str = "${oc.env:EFFDET_CACHE,'~/.cache/effdet'}"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # input pipeline
    deterministic: bool = False  # same order and augmentations on every run (slower)
    seed: int = non_negative(0)
    shuffle_buffer: int = positive(1024)
    max_instances_per_image: int = positive(100)
    jitter_min: float = field(default=0.1, metadata={"min": 0.01})
    jitter_max: float = field(default=2.0, metadata={"min": 0.01})
    hflip: bool = True
    grid_mask: bool = False
    autoaugment_policy: Optional[str] = None  # v0: the detection AutoAugment policy
    # JPEGs shrunk ≥ 2× (jitter, or fitting in eval) are decoded at 1/2, 1/4 or 1/8 resolution (DCT scaling)
    reduced_decode: bool = True
    # records that fail their CRC, do not parse or hold an undecodable image: skip (counted, reported) or stop
    # (checkpoint, then exit naming the shard). With skip, the run still stops past this share of records read.
    on_corrupt: str = one_of("skip", "effdet.data.reader:ON_CORRUPT")
    max_corrupt_fraction: float = fraction(0.01)


@dataclass
class HardwareConfig:
    name: str = registered("cpu", "effdet.hardware:HARDWARE")
    num_workers: int = positive(1)  # workers per host; more than 1 (or several hosts): run.py starts them
    hosts: List[str] = field(default_factory=list)  # several servers: ["name:workers", ...]; empty: this one
    launcher: str = one_of("horovodrun", ["horovodrun", "mpirun", "none"])
    launcher_args: List[str] = field(default_factory=list)  # extra arguments for horovodrun / mpirun
    cores_per_worker: int = non_negative(0)  # mpirun --map-by socket:PE=N; 0: the host's cores / its workers
    dry_run: bool = False  # print the launch command and the files it would write; start nothing
    # the device's defaults for trainer.precision and trainer.xla (TrainerConfig refers to these)
    precision: str = one_of("fp32", PRECISIONS)
    xla: bool = False
    intra_op_threads: int = non_negative(0)  # 0: TensorFlow decides
    inter_op_threads: int = non_negative(0)
    # glibc: keep megabyte buffers in malloc's heap instead of a fresh mmap each (docs/benchmarks.md: input pipeline)
    malloc_tuning: bool = True
    # TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS), which TF 2.15 leaves off on CPUs without AVX-512
    onednn: bool = True
    # Horovod's background cycle (HOROVOD_CYCLE_TIME, which wins when set); null: Horovod's own
    horovod_cycle_time_ms: Optional[float] = field(default=None, metadata={"min": 0.1})
    # Gaudi (hls1, hls1h): the HCCL API needs no HCL config file; HCL_PORT of the file otherwise
    hccl: bool = False
    hcl_port: int = field(default=5332, metadata={"min": 1, "max": 65535})
    # Horovod Elastic (training modes, horovodrun with Gloo): workers may die or be added while the job trains;
    # it goes on while at least min_workers are left (docs/distributed.md). num_workers (or hosts) is how many
    # it starts with.
    elastic: bool = False
    min_workers: int = positive(1)
    max_workers: Optional[int] = positive(None)  # null: as many as the hosts offer
    # a program that prints the available hosts, one `name:slots` a line (Horovod's host discovery); instead
    # of hosts, when hosts may be added or taken away
    discovery_script: Optional[str] = None
    elastic_timeout: int = positive(600)  # seconds to wait for min_workers after workers were lost
    # an elastic job's horovodrun --gloo-timeout-seconds (Horovod's own is 30): how long a transfer waits for a
    # peer. A worker's loss reaches the others through a closed connection, or, for one then waiting on another
    # survivor, only through this (docs/distributed.md)
    collective_timeout: int = positive(10)
    # horovodrun --network-interface (e.g. eth0); null: Horovod finds one (lo when every host is this machine)
    network_interface: Optional[str] = None


@dataclass
class LossConfig:
    alpha: float = fraction(0.25)  # focal loss
    gamma: float = field(default=1.5, metadata={"min": 0.0})
    label_smoothing: float = fraction(0.0)
    delta: float = field(default=0.1, metadata={"min": 0.0})  # Huber box loss
    box_loss_weight: float = field(default=50.0, metadata={"min": 0.0})
    iou_loss_type: Optional[str] = None  # iou | giou
    iou_loss_weight: float = field(default=1.0, metadata={"min": 0.0})
    jit_compile: bool = True  # XLA fuses the focal loss's forward and backward passes into one loop each


@dataclass
class TrainerConfig:
    batch_size: int = positive(8)  # per worker
    num_epochs: int = positive(300)
    total_steps: Optional[int] = positive(None)  # default: num_epochs × examples per epoch / global batch
    seed: int = non_negative(0)
    deterministic: bool = False  # identical loss sequences on the CPU for a fixed seed (slower)
    ckpt: Optional[str] = None  # an EfficientDet checkpoint to start from: automl's or ours
    backbone_ckpt: Optional[str] = None  # an EfficientNet checkpoint for the backbone
    precision: str = one_of("${hardware.precision}", PRECISIONS)  # default: the device's (conf/hardware)
    xla: bool = "${hardware.xla}"  # default: the device's
    steps_per_loop: int = positive(1)
    # none | backbone (each EfficientNet block) | all (also each BiFPN cell and head tower): activations
    # recomputed in the backward pass instead of kept, for less memory at the cost of a second forward pass
    recompute: str = one_of("none", "effdet.model.recompute:RECOMPUTE_SCOPES")
    checkpoint_every_n_steps: int = positive(1000)
    # hardware.elastic: the state every worker keeps in memory, to go back to when one is lost (the steps since
    # are trained again) and to pass on to added ones; a commit copies every variable and asks about new hosts
    elastic_commit_every_n_steps: int = positive(50)
    keep_checkpoint_max: int = positive(5)
    log_every_n_steps: int = positive(100)
    on_nonfinite: str = one_of("stop", ["stop", "skip"])
    clip_gradient_norm: float = field(default=10.0, metadata={"min": 0.0})
    weight_decay: float = field(default=4e-5, metadata={"min": 0.0})
    ema_decay: float = fraction(0.9998)
    eval_after_training: bool = True
    progress_bar: bool = True
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class OptimizerConfig:
    name: str = registered("sgd", "effdet.train.optim:OPTIMIZERS")
    lr: float = field(default=0.08, metadata={"min": 0.0})  # per 64 images; scaled by the global batch
    momentum: float = fraction(0.9)
    schedule: str = registered("cosine", "effdet.train.optim:SCHEDULES")
    lr_warmup_init: float = field(default=0.008, metadata={"min": 0.0})
    lr_warmup_epoch: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class EvalConfig:
    batch_size: int = positive(8)
    samples: Optional[int] = positive(None)  # evaluate on the first N val images only
    nms: str = one_of("hard", "effdet.eval.postprocess:NMS_METHODS")  # soft: Gaussian soft-NMS (the paper's)
    iou_threshold: float = fraction(0.5)
    soft_nms_sigma: float = field(default=0.5, metadata={"min": 0.0})
    score_threshold: float = fraction(0.001)
    max_detections: int = positive(100)
    every_n_epochs: float = field(default=1.0, metadata={"min": 0.0})  # mode=train_and_eval
    continuous: bool = False  # mode=eval: evaluate each new checkpoint of a run dir as training writes it
    min_interval: float = field(default=180.0, metadata={"min": 0.0})  # seconds between continuous evaluations
    timeout: float = field(default=3600.0, metadata={"min": 0.0})  # stop after so long without a new checkpoint
    ckpt: Optional[str] = None  # mode=eval: a checkpoint, a checkpoint dir or a run dir (default: this run dir's)
    testdev_dir: Optional[str] = None  # mode=eval: write unscored detections there, for COCO test-dev submission
    use_ema: bool = True  # evaluate the exponential moving average of the weights, as automl does
    engine: str = registered("tensorflow", "effdet.eval.engines:ENGINES")  # tensorflow | tflite | onnxruntime
    # engine=tflite: the checkpoint's network converted to none (float32) | float16 | int8 (calibrated as
    # mode=export calibrates), or the path of a .tflite file mode=export wrote
    tflite_quantize: str = one_of("none", "effdet.eval.convert:QUANTIZATIONS", or_path=".tflite")
    onnx_file: Optional[str] = None  # engine=onnxruntime: a model.onnx mode=export wrote (default: convert here)
    # square: every image fitted into model.image_size and padded to it (automl; the SavedModel does this);
    # stride: padded only up to multiples of the coarsest level's stride, 2^max_level (640×480 runs at 512×384)
    padding: str = one_of("square", "effdet.data.pipeline:PADDINGS")
    # each evaluation draws the first N val images with their detections (at or above infer.draw_threshold) and
    # ground truth: eval/step_N/val_detections.png and TensorBoard's images; 0: none
    num_pictures: int = non_negative(12)


@dataclass
class InferConfig:
    # comma-separated paths, globs and directories (not entered recursively) of images (JPEG, PNG, BMP, GIF) and
    # videos (whatever FFmpeg decodes: mp4, mkv, avi, webm, mov...); other files are reported and skipped
    input: Optional[str] = None
    ckpt: Optional[str] = None  # a checkpoint, a checkpoint dir or a run dir
    use_ema: bool = True
    batch_size: int = positive(8)  # images, or frames of a video, per run of the network
    # the annotated images and videos, and each evaluation's val_detections.png, show detections scoring at least this
    draw_threshold: float = fraction(0.3)
    output_dir: Optional[str] = None  # default: <run dir>/detections


@dataclass
class ExportConfig:
    ckpt: Optional[str] = None  # a checkpoint, a checkpoint dir or a run dir
    use_ema: bool = True
    output_dir: Optional[str] = None  # default: <run dir>/saved_model
    # also TFLite networks beside the SavedModel, static shapes for XNNPACK, one per export.quantize form:
    # model.tflite (none: float32), model_fp16.tflite (float16), model_int8.tflite (int8)
    tflite: bool = False
    quantize: Any = one_of("none", "effdet.eval.convert:QUANTIZATIONS", many=True)  # one form or a list of them
    calibration_samples: int = positive(200)  # int8: calibrated on the first N train images, prepared as eval
    int8_fallback: bool = False  # int8: ops without an integer kernel stay float32 instead of failing the export
    onnx: bool = False  # also model.onnx (tf2onnx; the optional onnx extra)
    # evaluate every form written on the val split (eval.samples images): export_report.md and .json
    compare: bool = False
    latency_runs: int = positive(20)  # export.compare: the network's latency is the median of so many runs


@dataclass
class CheckDataConfig:
    """mode=check_data: the dataset doctor."""

    max_records: Optional[int] = positive(None)  # per split; default: every record
    min_coverage: float = fraction(0.9)  # anchor coverage of the train boxes under this is an error
    # candidates for the suggestions: model.anchor_scale, and model.image_size (default: 1.5× and 2× the model's)
    anchor_scales: List[float] = field(default_factory=lambda: [1.0, 1.5, 2.0, 3.0, 4.0, 5.0])
    image_sizes: List[int] = field(default_factory=list)
    max_suggestion_boxes: int = positive(20000)  # the candidates are scored on at most this many boxes


@dataclass
class Config:
    mode: str = registered("train", "effdet.modes:MODES")
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    hardware: HardwareConfig = MISSING
    trainer: TrainerConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    eval: EvalConfig = MISSING
    infer: InferConfig = field(default_factory=InferConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    check_data: CheckDataConfig = field(default_factory=CheckDataConfig)
    # for a sweeper that optimises (hparams_search): the metric of the job's last evaluation that run.py returns
    optimized_metric: Optional[str] = one_of(None, "effdet.eval.evaluate:RECORDED")


def register_schema() -> None:
    """Registers the schema with Hydra; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="effdet_schema", node=Config)
