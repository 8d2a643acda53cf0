"""Checkpoints: Google automl's TF1 name-based ones (full detector, EMA or not, and EfficientNet backbones)
and the project's own TF2 object-based ones."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from effdet.artifacts import checkpoint_dir
from effdet.errors import CheckpointError

EMA_SUFFIX = "/ExponentialMovingAverage"
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
CLASS_PREDICT = "class_net/class-predict/"
# Training state that TF1 checkpoints carry besides the model; never "unexpected".
_TRAINING_STATE = ("global_step", "/Momentum", "/Adam", "beta1_power", "beta2_power", "learning_rate")


def variable_key(variable: tf.Variable, model: tf.keras.Model) -> str:
    """A model variable's automl checkpoint name: its TF name without the model prefix and ':0'."""
    name = variable.name.split(":")[0]
    prefix = model.name + "/"
    return name[len(prefix):] if name.startswith(prefix) else name


@dataclass
class LoadReport:
    path: str
    kind: str  # "automl" | "automl-backbone" | "effdet"
    used_ema: bool = False
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatched: List[Tuple[str, tuple, tuple]] = field(default_factory=list)
    skipped_class_head: Optional[str] = None

    def summary(self) -> str:
        lines = [f"checkpoint {self.path} ({self.kind}{', EMA weights' if self.used_ema else ''}): "
                 f"{len(self.loaded)} loaded, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
                 f"{len(self.shape_mismatched)} shape-mismatched"]
        if self.skipped_class_head:
            lines.append(f"  {self.skipped_class_head}")
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected)):
            if names:
                shown = ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")
                lines.append(f"  {title}: {shown}")
        for name, ours, theirs in self.shape_mismatched[:5]:
            lines.append(f"  shape mismatch: {name}: model {ours}, checkpoint {theirs}")
        return "\n".join(lines)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint prefix from a prefix, an index file or a directory (its latest checkpoint)."""
    path = os.path.expanduser(str(path))
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            if os.path.exists(os.path.join(path, "checkpoint")):
                raise CheckpointError(f"the 'checkpoint' file in {path} names a checkpoint that is not there")
            raise CheckpointError(f"no checkpoint in directory {path} (no 'checkpoint' file naming one)")
        return latest
    if not os.path.exists(path + ".index"):
        raise CheckpointError(f"no checkpoint at {path}: expected {path}.index (a TF checkpoint prefix) "
                              "or a directory holding checkpoints")
    return path



def checkpoint_of(path: str, key: Optional[str] = None) -> str:
    """A checkpoint prefix from a prefix, an index file, a directory of checkpoints, or a run dir (its
    checkpoints/). An error names the config `key` the path came from."""
    expanded = os.path.expanduser(str(path))
    run_checkpoints = checkpoint_dir(expanded)
    try:
        if os.path.isdir(run_checkpoints) and not os.path.exists(os.path.join(expanded, "checkpoint")):
            return resolve_checkpoint(run_checkpoints)
        return resolve_checkpoint(expanded)
    except CheckpointError as error:
        if key is None:
            raise
        raise CheckpointError(f"{key}={path}: {error}") from None


def load_weights(model: tf.keras.Model, path: str, backbone_only: bool = False,
                 prefer_ema: bool = True) -> LoadReport:
    """Loads a checkpoint of any supported kind into `model` and reports what matched."""
    prefix = resolve_checkpoint(path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    if OBJECT_GRAPH_KEY in shapes:
        if backbone_only:
            raise CheckpointError(f"{prefix} is an effdet checkpoint; use it as trainer.ckpt, not backbone_ckpt")
        return _load_effdet(model, prefix, shapes)
    return _load_name_based(model, prefix, reader, shapes, backbone_only, prefer_ema)


def _load_name_based(model, prefix, reader, shapes, backbone_only, prefer_ema) -> LoadReport:
    backbone_scope = model.backbone.name + "/"
    variables = {variable_key(v, model): v for v in model.variables}
    if backbone_only:
        variables = {k: v for k, v in variables.items() if k.startswith(backbone_scope)}
    report = LoadReport(prefix, "automl-backbone" if backbone_only else "automl")
    has_ema = any(name.endswith(EMA_SUFFIX) for name in shapes)
    report.used_ema = has_ema and prefer_ema
    plan = []  # (variable, checkpoint key): nothing is assigned until the whole checkpoint has been checked
    for key, variable in sorted(variables.items()):
        source = key + EMA_SUFFIX if report.used_ema and key + EMA_SUFFIX in shapes else key
        if source not in shapes:
            report.missing.append(key)
            continue
        expected, stored = tuple(variable.shape), tuple(shapes[source])
        if expected != stored:
            if key.startswith(CLASS_PREDICT) and expected[:-1] == stored[:-1]:
                report.skipped_class_head = _class_head_message(stored[-1], model)
                continue
            report.shape_mismatched.append((key, expected, stored))
            continue
        plan.append((variable, source))
        report.loaded.append(key)
    for name in sorted(shapes):
        base = name[: -len(EMA_SUFFIX)] if name.endswith(EMA_SUFFIX) else name
        if base in variables or any(marker in name for marker in _TRAINING_STATE):
            continue
        if backbone_only and (not base.startswith(backbone_scope) or base.startswith(backbone_scope + "head/")):
            continue  # the classifier head of an ImageNet backbone, unused by the detector
        report.unexpected.append(name)
    _check(report)
    for variable, source in plan:
        variable.assign(reader.get_tensor(source))
    return report


def _class_head_message(stored_outputs: int, model) -> str:
    return (f"class head not loaded: the checkpoint predicts {stored_outputs} outputs per position, the model "
            f"{model.num_classes * model.num_anchors} ({model.num_classes} classes x {model.num_anchors} anchors); "
            "it starts fresh (fine-tuning to another dataset)")


def _check(report: LoadReport) -> None:
    if not report.loaded:
        raise CheckpointError(f"nothing in {report.path} matches this model (is it a checkpoint of another "
                              f"variant or backbone?)\n{report.summary()}")
    if report.shape_mismatched:
        raise CheckpointError(f"{report.path} does not fit this model: shapes differ (another variant?)\n"
                              f"{report.summary()}")


# --- the project's own checkpoints -------------------------------------------------------------------------

def model_checkpoint(model: tf.keras.Model, **extra) -> tf.train.Checkpoint:
    """The object graph of effdet checkpoints: the network under `model` (trainers add their state)."""
    return tf.train.Checkpoint(model=model, **extra)


def save_weights(model: tf.keras.Model, prefix: str) -> str:
    return model_checkpoint(model).write(prefix)


def _load_effdet(model, prefix, shapes) -> LoadReport:
    report = LoadReport(prefix, "effdet")
    stored_predict = shapes.get("model/class_net/predict/bias/.ATTRIBUTES/VARIABLE_VALUE")
    target = model
    if stored_predict is not None and tuple(stored_predict) != tuple(model.class_net.predict.bias.shape):
        report.skipped_class_head = _class_head_message(stored_predict[-1], model)
        target = _without_class_predict(model)
    root = tf.train.Checkpoint(model=target)
    report.unexpected = _unclaimed_model_variables(prefix, shapes, root, report.skipped_class_head is not None)
    if report.unexpected:
        raise CheckpointError(f"{prefix} has {len(report.unexpected)} model variables that this model lacks "
                              f"(a deeper or wider variant?)\n{report.summary()}")
    before = [v.numpy() for v in model.variables]  # restoring is not atomic: undo it if it fails
    try:
        status = root.read(prefix)
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
        for variable, value in zip(model.variables, before):
            variable.assign(value)
        raise CheckpointError(f"{prefix} does not fit this model: {str(error).splitlines()[0]}") from None
    status.expect_partial()  # trainer state (optimizer, EMA, step) is the trainer's to restore
    report.loaded = [variable_key(v, model) for v in model.variables
                     if not (report.skipped_class_head and "/class-predict/" in v.name)]
    return report


def _unclaimed_model_variables(prefix, shapes, root, skipping_class_predict: bool) -> List[str]:
    """The checkpoint's model variables that no variable of `root` would take."""
    view = tf.train.CheckpointView(prefix)
    claimed = set(view.match(root))
    unclaimed = []
    for key in sorted(shapes):
        if not key.startswith("model/") or not key.endswith("/.ATTRIBUTES/VARIABLE_VALUE") or "OPTIMIZER_SLOT" in key:
            continue
        if skipping_class_predict and key.startswith("model/class_net/predict/"):
            continue
        node = 0
        for part in key.split("/")[:-2]:
            node = view.children(node).get(part)
            if node is None:
                break
        if node is None or node not in claimed:
            unclaimed.append(key)
    return unclaimed


def _without_class_predict(model: tf.keras.Model) -> tf.train.Checkpoint:
    """The model's object graph minus the class prediction layer, to restore everything else."""
    head = model.class_net
    children = {name: getattr(model, name) for name in ("backbone", "extra_levels", "fpn_cells", "box_net")}
    return tf.train.Checkpoint(class_net=tf.train.Checkpoint(convs=head.convs, norms=head.norms), **children)


# --- writing automl-style checkpoints ----------------------------------------------------------------------

def write_name_based_checkpoint(prefix: str, tensors: Dict[str, np.ndarray]) -> str:
    """Writes a TF1-style checkpoint whose keys are exactly the given names."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.convert_to_tensor(tensors[n]) for n in names])
    return prefix


def export_name_based(model: tf.keras.Model, prefix: str) -> str:
    """Writes the model's weights under automl's names, readable by automl and by `load_weights`."""
    return write_name_based_checkpoint(prefix, {variable_key(v, model): v.numpy() for v in model.variables})
