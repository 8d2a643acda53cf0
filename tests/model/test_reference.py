"""The model family equals Google automl's: exact parameter counts, FLOPs, and checkpoint names."""
import gc

import pytest

from effdet.model.builder import build_model, image_size_of
from effdet.model.checkpoint import variable_key
from effdet.model.flops import count_flops, count_params
from tests.conftest import compose, model_variants, reference_d0_variables, reference_params

REFERENCE = reference_params()


def test_every_reference_variant_has_a_config_and_back():
    assert sorted(REFERENCE) == model_variants()


@pytest.mark.parametrize("variant", model_variants())
def test_parameter_counts_and_flops_equal_the_reference(variant):
    expected = REFERENCE[variant]
    cfg = compose([f"model={variant}", "data=coco"])  # 90 classes, as the reference
    model = build_model(cfg.model, cfg.data.num_classes)
    assert count_params(model.trainable_variables) == int(expected["trainable_params"])
    assert count_params(model.variables) == int(expected["all_variables"])
    assert image_size_of(cfg.model) == (int(expected["image_size"]),) * 2
    if expected["flops_madds_B"]:
        flops = count_flops(model, image_size_of(cfg.model)) / 1e9
        assert flops == pytest.approx(float(expected["flops_madds_B"]), rel=0.03)
    del model
    gc.collect()


def test_d0_variables_have_automl_checkpoint_names_and_shapes():
    cfg = compose(["model=efficientdet-d0", "data=coco"])
    model = build_model(cfg.model, cfg.data.num_classes)
    ours = {variable_key(v, model): tuple(v.shape) for v in model.variables}
    assert ours == reference_d0_variables()
    trainable = {variable_key(v, model) for v in model.trainable_variables}
    assert all(("moving_" in name) != (name in trainable) for name in ours)
