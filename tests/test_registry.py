import os

import pytest
import tensorflow as tf

from effdet.errors import ConfigError
from effdet.registry import Registry


def test_registering_a_name_twice_is_an_error():
    registry = Registry("thing")
    registry.register("a")(object())
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(object())


def test_unknown_name_lists_valid_names_and_the_closest():
    registry = Registry("widget")
    for name in ("alpha", "beta", "gamma"):
        registry.register(name)(name)
    with pytest.raises(ConfigError) as caught:
        registry.get("betta", where="x.y")
    message = str(caught.value)
    assert "unknown widget 'betta'" in message
    assert "x.y" in message
    assert "alpha, beta, gamma" in message
    assert "Did you mean 'beta'?" in message


def test_unknown_name_without_a_close_one_suggests_nothing():
    registry = Registry("widget")
    registry.register("alpha")(1)
    with pytest.raises(ConfigError) as caught:
        registry.get("zzzzzz")
    assert "Did you mean" not in str(caught.value)


def test_every_backbone_builds_and_returns_five_levels():
    from effdet.model import BACKBONES

    assert len(BACKBONES) == 13
    for name in BACKBONES:
        backbone = BACKBONES.get(name)()
        features = backbone(tf.zeros([1, 64, 64, 3]), training=False)
        assert [f.shape[1] for f in features] == [32, 16, 8, 4, 2], name
        assert [f.shape[-1] for f in features] == backbone.level_channels, name


def test_every_fusion_method_fuses_two_inputs():
    from effdet.model import FUSIONS

    a, b = tf.ones([1, 2, 2, 4]), 3 * tf.ones([1, 2, 2, 4])
    results = {}
    for name in FUSIONS:
        fusion = FUSIONS.get(name)
        weights = [tf.Variable(tf.ones(fusion.weight_shape(4))) for _ in range(2)]
        results[name] = float(tf.reduce_mean(fusion([a, b], weights if fusion.normalize else [])))
    assert results["sum"] == pytest.approx(4.0)
    assert results["attn"] == pytest.approx(2.0)  # softmax of equal weights: the mean
    assert results["fastattn"] == pytest.approx(4.0 / 2.0001, rel=1e-4)
    assert results["channel_attn"] == pytest.approx(2.0)


def test_every_normalization_and_activation_builds():
    from effdet.model import ACTIVATIONS, NORMALIZATIONS

    for name in NORMALIZATIONS:
        layer = NORMALIZATIONS.get(name)(name="bn", momentum=0.9, epsilon=1e-3)
        assert layer(tf.ones([2, 3]), training=False).shape == (2, 3)
        assert layer.momentum == 0.9
    for name in ACTIVATIONS:
        assert ACTIVATIONS.get(name)(tf.constant([-1.0, 7.0])).shape == (2,)


def test_every_hardware_backend_has_a_config_file_and_the_cpu_one_sets_up():
    from effdet.hardware import HARDWARE
    from tests.conftest import CONF_DIR, compose

    files = sorted(name[:-5] for name in os.listdir(os.path.join(CONF_DIR, "hardware")))
    assert HARDWARE.names() == files == ["cpu", "gpu", "hls1", "hls1h"]
    for name in files:
        assert compose([f"hardware={name}"]).hardware.name == name
    assert HARDWARE.get("cpu")().setup(compose().hardware).device == "cpu"  # gpu and hls*: tests/hardware


def test_every_mode_is_registered_with_a_config_file():
    import os

    from effdet.modes import MODES
    from tests.conftest import CONF_DIR

    files = sorted(name[:-5] for name in os.listdir(os.path.join(CONF_DIR, "mode")))
    assert MODES.names() == files
