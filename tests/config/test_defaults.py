"""Every default has one home, the schema (effdet/config/schema.py).

A group's file (conf/<group>/<option>.yaml) holds what identifies its option or differs from what it would get
anyway: the schema's default, or what its defaults list pulls in (hardware/gpu.yaml inherits cpu.yaml, the lite
models model/base/lite.yaml, an experiment the options it picks). A class or function argument that mirrors a
config key has the schema's default, or none.
"""
import copy
import dataclasses
import inspect
import os
import re
import shutil

import pytest
import yaml
from omegaconf import OmegaConf

from effdet.config import schema
from effdet.config.validate import choices_of
from tests.conftest import CONF_DIR

_MISSING = "???"


def _schema_tree() -> dict:
    """The job config with every node at its schema default (group nodes, MISSING in Config, built too)."""
    groups = {spec.name: spec.type() for spec in dataclasses.fields(schema.Config)
              if dataclasses.is_dataclass(spec.type) and spec.default == _MISSING}
    return OmegaConf.to_container(OmegaConf.structured(schema.Config(**groups)), resolve=False)


def _read(path: str):
    """(package from its `# @package` line or None, defaults list, body) of a config file."""
    with open(path) as handle:
        text = handle.read()
    header = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
    body = yaml.safe_load(text) or {}
    return (header.group(1) if header else None), body.pop("defaults", []), body


def _package_of(path: str, conf_dir: str, here: str = None) -> str:
    """Where a file's body lands in the job config ("" for _global_), as Hydra places it."""
    header, _, _ = _read(path)
    if here is not None:
        return here
    if header is not None:
        return "" if header == "_global_" else header
    return os.path.dirname(os.path.relpath(path, conf_dir)).replace(os.sep, ".")


def _placed(body: dict, package: str) -> dict:
    for key in reversed([k for k in package.split(".") if k]):
        body = {key: body}
    return body


def _merge(base: dict, top: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _inherited(path: str, package: str, conf_dir: str) -> dict:
    """What the file's defaults list puts into the job config before the file's own body."""
    _, defaults, _ = _read(path)
    folder, result = os.path.dirname(path), {}
    for entry in defaults:
        if entry == "_self_":
            continue
        if isinstance(entry, dict):  # override /group: option
            ((key, option),) = entry.items()
            group = key.split()[-1].lstrip("/")
            if group.startswith("hydra"):
                continue
            target, here = os.path.join(conf_dir, group, f"{option}.yaml"), None
        else:  # an option of the same group, or a shared part (base/lite@_here_)
            name, _, at = entry.partition("@")
            target, here = os.path.join(folder, f"{name}.yaml"), (package if at == "_here_" else None)
        result = _merge(result, _composed(target, _package_of(target, conf_dir, here), conf_dir))
    return result


def _composed(path: str, package: str, conf_dir: str) -> dict:
    return _merge(_inherited(path, package, conf_dir), _placed(_read(path)[2], package))


def _leaves(tree: dict, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def _same(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and a != _MISSING


def restatements(conf_dir: str = CONF_DIR) -> list:
    """"file: key=value" for each value a config file sets to what it would have without it."""
    found, root = [], _schema_tree()
    for folder, _, files in os.walk(conf_dir):
        for file in sorted(f for f in files if f.endswith(".yaml")):
            path = os.path.join(folder, file)
            if os.path.relpath(path, conf_dir) == "config.yaml":  # the primary config: its defaults and hydra
                continue
            package = _package_of(path, conf_dir)
            before = _merge(root, _inherited(path, package, conf_dir))
            for keys, value in _leaves(_placed(_read(path)[2], package)):
                if keys[0] == "hydra" or (keys[-1] in ("name", "mode") and value == file[:-5]):
                    continue  # Hydra's own settings; the value that names the option identifies it
                node = before
                for key in keys:
                    node = node.get(key, {}) if isinstance(node, dict) else {}
                if _same(value, node):
                    found.append(f"{os.path.relpath(path, conf_dir)}: {'.'.join(keys)}={value}")
    return found


def test_no_config_file_restates_a_default():
    assert restatements() == []


def test_a_restated_default_is_found(tmp_path):
    conf = str(tmp_path / "conf")
    shutil.copytree(CONF_DIR, conf)
    additions = {"model/efficientdet-d1.yaml": "max_level: 7\n",  # the schema's
                 "model/efficientdet-lite1.yaml": "act_type: relu6\n",  # model/base/lite.yaml's
                 "hardware/hls1h.yaml": "launcher: mpirun\n",  # hls1's
                 "experiment/d0_coco_hls1.yaml": "hardware:\n  num_workers: 8\n",  # hardware/hls1's
                 "mode/infer.yaml": "infer:\n  draw_threshold: 0.3\n"}  # the schema's, under a _global_ package
    for name, text in additions.items():
        with open(os.path.join(conf, name), "a") as handle:
            handle.write(text)
    assert sorted(restatements(conf)) == sorted([
        "experiment/d0_coco_hls1.yaml: hardware.num_workers=8", "hardware/hls1h.yaml: hardware.launcher=mpirun",
        "mode/infer.yaml: infer.draw_threshold=0.3", "model/efficientdet-d1.yaml: model.max_level=7",
        "model/efficientdet-lite1.yaml: model.act_type=relu6"])


def test_a_value_is_judged_against_what_its_file_inherits():
    # both are the schema's defaults, but not what the file would inherit: cpu.yaml's cycle time, hls1.yaml's 8 cards
    gpu, one_card = (os.path.join(CONF_DIR, *name) for name in [("hardware", "gpu.yaml"),
                                                                ("experiment", "d0_coco_1hpu.yaml")])
    assert _read(gpu)[2]["horovod_cycle_time_ms"] is None and _read(one_card)[2]["hardware"]["num_workers"] == 1
    assert not [r for r in restatements() if r.startswith(("hardware/gpu.yaml", "experiment/d0_coco_1hpu.yaml"))]


# --- class and function defaults ------------------------------------------------------------------------------

def _mirrors():
    """(callable, schema node, {argument: config key, or None for an argument that is no config key})."""
    from effdet.data import shapes
    from effdet.data.fake import FakeInput
    from effdet.data.pipeline import Augmentation, InputPipeline, inference_example
    from effdet.data.reader import CorruptRecords
    from effdet.eval.postprocess import postprocess
    from effdet.model import BACKBONES
    from effdet.model.efficientdet import EfficientDet
    from effdet.model.efficientnet import EfficientNet
    from effdet.model.layers import NormFactory
    from effdet.train import losses, optim
    from effdet.model.ema import ExponentialMovingAverage
    from effdet.train.trainer import TrainSettings

    return [
        (TrainSettings, schema.TrainerConfig, {}),
        (Augmentation, schema.DataConfig, {}),
        (InputPipeline, schema.DataConfig, {"max_instances": "max_instances_per_image"}),
        (InputPipeline.eval, schema.EvalConfig, {"batch_size": None}),
        (inference_example, schema.DataConfig, {}),
        (FakeInput, schema.DataConfig, {}),
        (CorruptRecords, schema.DataConfig, {"max_fraction": "max_corrupt_fraction"}),
        (shapes.generate_shapes, schema.SyntheticConfig, {"image_size": None}),
        (shapes.ensure_shapes, schema.SyntheticConfig, {"image_size": None}),
        (EfficientDet, schema.ModelConfig, {}),
        (EfficientNet, schema.ModelConfig, {"activation": "act_type", "drop_connect_rate": "backbone_drop_connect_rate"}),
        (BACKBONES.get("efficientnet-b0"), schema.ModelConfig,
         {"activation": "act_type", "drop_connect_rate": "backbone_drop_connect_rate"}),
        (NormFactory, schema.BatchNormConfig, {}),
        (losses.DetectionLoss, schema.LossConfig, {}),
        (losses.FocalLossSum, schema.LossConfig, {}),
        (losses.focal_loss, schema.LossConfig, {}),
        (losses.huber_box_loss, schema.LossConfig, {}),
        (ExponentialMovingAverage, schema.TrainerConfig, {"decay": "ema_decay"}),
        (postprocess, schema.EvalConfig, {}),
        (optim.sgd, schema.OptimizerConfig, {}),
        (optim.adam, schema.OptimizerConfig, {"beta_1": "momentum"}),
    ]


def disagreements(function, node: type, keys: dict) -> list:
    """"argument=default (schema: value)" for each argument of `function` that mirrors a key of `node` with
    another default; raises if none of its arguments mirrors one (the table above is then wrong)."""
    fields = {spec.name for spec in dataclasses.fields(node)}
    mirrored, found = 0, []
    for name, parameter in inspect.signature(function).parameters.items():
        key = keys.get(name, name)
        if key not in fields:
            continue
        mirrored += 1
        if parameter.default is inspect.Parameter.empty:
            continue  # required: the caller passes the config's value
        expected = schema.default_of(node, key)
        if not _same(parameter.default, expected):
            found.append(f"{getattr(function, '__qualname__', function)}({name}={parameter.default!r}): "
                         f"{node.__name__}.{key} is {expected!r}")
    assert mirrored, f"{function} has no argument that mirrors a key of {node.__name__}"
    return found


def test_class_and_function_defaults_are_the_schemas():
    assert [problem for entry in _mirrors() for problem in disagreements(*entry)] == []


def test_derived_defaults_are_the_schemas():
    from effdet.data import shapes
    from effdet.model.efficientdet import EfficientDet

    size = schema.default_of(schema.SyntheticConfig, "image_size")
    assert shapes.DEFAULT_IMAGE_SIZE == (size, size)
    assert inspect.signature(shapes.generate_shapes).parameters["image_size"].default == (size, size)
    anchors = inspect.signature(EfficientDet).parameters["num_anchors"].default
    assert anchors == schema.default_of(schema.ModelConfig, "num_scales") * len(
        schema.default_of(schema.ModelConfig, "aspect_ratios"))


def test_a_disagreeing_default_is_found():
    def built_by_hand(jitter_min: float = 0.5, hflip: bool = True, max_fraction: float = 0.01, other: int = 3):
        return jitter_min, hflip, max_fraction, other

    assert disagreements(built_by_hand, schema.DataConfig, {"max_fraction": "max_corrupt_fraction"}) == [
        f"{built_by_hand.__qualname__}(jitter_min=0.5): DataConfig.jitter_min is 0.1"]
    with pytest.raises(AssertionError, match="no argument"):
        disagreements(built_by_hand, schema.LossConfig, {})


# --- choice lists ---------------------------------------------------------------------------------------------

def _choice_fields(node=schema.Config, path=""):
    for spec in dataclasses.fields(node):
        if dataclasses.is_dataclass(spec.type):
            yield from _choice_fields(spec.type, f"{path}{spec.name}.")
        elif "choices" in spec.metadata:
            yield f"{path}{spec.name}", spec


@pytest.mark.parametrize("key, spec", list(_choice_fields()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_choice_list_resolves_and_holds_its_default(key, spec):
    choices = choices_of(spec.metadata["choices"])
    assert choices, key
    default = spec.default
    if isinstance(default, str) and default.startswith("${"):
        return  # the device's (hardware.precision), itself a choice field
    assert default is None or default in choices, (key, default, choices)


def test_a_choice_list_has_one_home():
    from effdet.data.pipeline import PADDINGS
    from effdet.eval.postprocess import NMS_METHODS
    from effdet.train.builder import PRECISION_POLICIES

    specs = dict(_choice_fields())
    assert choices_of(specs["eval.padding"].metadata["choices"]) == list(PADDINGS)
    assert choices_of(specs["eval.nms"].metadata["choices"]) == list(NMS_METHODS)
    for key in ("trainer.precision", "hardware.precision"):
        assert choices_of(specs[key].metadata["choices"]) == list(PRECISION_POLICIES)
