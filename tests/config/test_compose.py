"""Every config-group option composes, is typed, and reaches the builder with the right values."""

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from effdet.config import validate
from effdet.errors import ConfigError
from tests.conftest import compose, group_options, model_variants


@pytest.mark.parametrize("variant", model_variants())
def test_every_model_variant_composes_and_validates(variant):
    cfg = compose([f"model={variant}"])
    validate(cfg)
    assert cfg.model.name == variant
    assert cfg.model.backbone.startswith("efficientnet-")


@pytest.mark.parametrize("group", ["data", "hardware", "trainer", "mode"])
def test_every_option_of_every_group_composes(group):
    for option in group_options(group):
        validate(compose([f"{group}={option}"]))


def test_num_classes_comes_from_the_data_config():
    assert compose(["data=coco"]).data.num_classes == 90
    assert compose(["data=shapes", "mode=inspect"]).data.num_classes == compose(["data=shapes"]).data.num_classes


def test_inspect_uses_coco_classes_unless_data_is_given():
    assert compose(["mode=inspect"]).data.name == "coco"
    assert compose(["mode=inspect", "data=shapes"]).data.name == "shapes"


def test_a_wrongly_typed_value_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as caught:
        compose(["trainer.batch_size=abc"])
    assert isinstance(caught.value.__cause__, ValidationError)


def test_an_unknown_key_in_a_group_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose(["model.fpn_filterz=3"])


@pytest.mark.parametrize("override, key", [
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("model.batch_norm.momentum=1.5", "model.batch_norm.momentum"),
    ("model.min_level=0", "model.min_level"),
    ("model.backbone=efficientnet-b9", "model.backbone"),
    ("model.act_type=gelu", "model.act_type"),
    ("hardware.intra_op_threads=-1", "hardware.intra_op_threads"),
    ("eval.engine=tflight", "eval.engine"),
    ("eval.tflite_quantize=int4", "eval.tflite_quantize"),
    ("eval.tflite_quantize=model.onnx", "eval.tflite_quantize"),
    ("export.quantize=fp16", "export.quantize"),
    ("export.quantize=[none,int4]", "export.quantize"),
    ("export.quantize=[]", "export.quantize"),
    ("export.calibration_samples=0", "export.calibration_samples"),
    ("trainer.recompute=heads", "trainer.recompute"),
])
def test_validate_names_the_bad_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose([override]))


@pytest.mark.parametrize("preset", group_options("experiment"))
def test_every_experiment_preset_composes_and_validates(preset):
    cfg = compose([f"+experiment={preset}"])
    validate(cfg)
    expected = {"d0_coco_1hpu": ("efficientdet-d0", "coco", "hls1", 1, 8, "mixed_bfloat16"),
                "d0_coco_hls1": ("efficientdet-d0", "coco", "hls1", 8, 8, "mixed_bfloat16"),
                "d0_coco_8gpu": ("efficientdet-d0", "coco", "gpu", 8, 8, "mixed_float16"),
                "shapes_quick": ("efficientdet-lite0", "shapes", "cpu", 1, compose().trainer.batch_size, "fp32")}
    assert (cfg.model.name, cfg.data.name, cfg.hardware.name, cfg.hardware.num_workers, cfg.trainer.batch_size,
            cfg.trainer.precision) == expected[preset]
    if preset.startswith("d0_coco"):
        assert cfg.trainer.num_epochs == 300 and cfg.mode == "train_and_eval"
        assert compose([f"+experiment={preset}", "mode=eval"]).mode == "eval"  # the preset picks a mode, not forces it
    # a command-line override still wins over the preset
    assert compose([f"+experiment={preset}", "trainer.batch_size=2"]).trainer.batch_size == 2


def test_quantizations_are_named_or_a_file_and_export_takes_a_list_of_them():
    validate(compose(["eval.engine=tflite", "eval.tflite_quantize=runs/x/model_int8.tflite"]))
    validate(compose(["export.tflite=true", "export.quantize=[none,float16,int8]"]))
    with pytest.raises(ConfigError, match=r"eval.tflite_quantize=int4 is not valid: choose one of none, float16, "
                                          r"int8, or the path of a .tflite file"):
        validate(compose(["eval.tflite_quantize=int4"]))
