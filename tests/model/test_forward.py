import numpy as np
import pytest
import tensorflow as tf

from effdet.model import EfficientDet, NormFactory
from effdet.model.bifpn import bifpn_nodes
from effdet.model.builder import build_model
from effdet.model.efficientdet import feature_sizes
from tests.conftest import compose


def tiny(num_classes=3, **kwargs):
    args = dict(fpn_num_filters=16, fpn_cell_repeats=1, box_class_repeats=1)
    args.update(kwargs)
    return EfficientDet("tiny", "efficientnet-b0", num_classes, **args)


@pytest.mark.parametrize("size", [128, 160])  # 160 is not a multiple of 2**7: levels 20, 10, 5, 3, 2
def test_every_level_and_head_has_the_expected_shape(size):
    model = tiny(num_classes=5)
    class_outputs, box_outputs = model(tf.zeros([2, size, size, 3]), training=False)
    sizes = feature_sizes((size, size), 7)
    assert len(class_outputs) == len(box_outputs) == 5
    for level, (c, b) in zip(range(3, 8), zip(class_outputs, box_outputs)):
        assert c.shape == (2, *sizes[level], 5 * 9), level
        assert b.shape == (2, *sizes[level], 4 * 9), level


def test_d7x_has_an_eighth_level():
    cfg = compose(["model=efficientdet-d7x", "model.fpn_num_filters=8", "model.fpn_cell_repeats=1",
                   "model.box_class_repeats=1", "model.backbone=efficientnet-b0", "data=shapes"])
    model = build_model(cfg.model, cfg.data.num_classes)
    class_outputs, _ = model(tf.zeros([1, 256, 256, 3]), training=False)
    assert [c.shape[1] for c in class_outputs] == [32, 16, 8, 4, 2, 1]


def test_class_head_starts_at_the_prior_probability():
    class_outputs, _ = tiny()(tf.zeros([1, 128, 128, 3]), training=False)
    probabilities = tf.sigmoid(tf.concat([tf.reshape(c, [-1]) for c in class_outputs], 0)).numpy()
    # zero-initialised? no: the bias is -log(99); the outputs stay near 0.01 at initialisation
    assert 0.001 < np.median(probabilities) < 0.1


def test_bifpn_graph_is_the_papers():
    nodes = bifpn_nodes(3, 7)
    assert [n.level for n in nodes] == [6, 5, 4, 3, 4, 5, 6, 7]
    assert [tuple(n.inputs) for n in nodes] == [(3, 4), (2, 5), (1, 6), (0, 7), (1, 7, 8), (2, 6, 9),
                                                (3, 5, 10), (4, 11)]


@pytest.mark.parametrize("fusion", ["sum", "attn", "fastattn", "channel_attn", "channel_fastattn"])
def test_every_fusion_method_runs_in_the_network(fusion):
    model = tiny(fpn_weight_method=fusion)
    class_outputs, _ = model(tf.random.uniform([1, 128, 128, 3], 0, 255), training=False)
    assert all(np.isfinite(c.numpy()).all() for c in class_outputs)
    weights = [v for v in model.variables if "/WSM" in v.name]
    assert (len(weights) > 0) == (fusion != "sum")


def test_training_updates_batch_norm_statistics_and_inference_does_not():
    model = tiny()
    images = tf.random.uniform([2, 128, 128, 3], 0, 255)
    model(images, training=False)
    stats = [v for v in model.variables if "moving_mean" in v.name]
    before = [s.numpy().copy() for s in stats]
    model(images, training=False)
    assert all(np.array_equal(b, s.numpy()) for b, s in zip(before, stats))
    model(images, training=True)
    assert any(not np.array_equal(b, s.numpy()) for b, s in zip(before, stats))


def test_batch_norm_settings_reach_every_layer():
    model = tiny(norm=NormFactory("batch_norm", momentum=0.9, epsilon=1e-2))
    model(tf.zeros([1, 128, 128, 3]))
    norms = [layer for layer in model.submodules if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert norms and all(n.momentum == 0.9 and n.epsilon == 1e-2 for n in norms)


def test_sync_batch_norm_is_horovods_and_matches_plain_batch_norm_on_one_worker():
    import horovod.tensorflow as hvd  # part of the README's set-up

    hvd.init()
    # no stochastic depth: both models must compute the same function in training mode
    sync = tiny(norm=NormFactory("sync_batch_norm"), backbone_drop_connect_rate=0.0)
    plain = tiny(backbone_drop_connect_rate=0.0)
    images = tf.random.uniform([2, 128, 128, 3], 0, 255, seed=1)
    sync(images[:1])
    plain(images[:1])
    plain.set_weights(sync.get_weights())
    assert any(isinstance(layer, hvd.SyncBatchNormalization) for layer in sync.submodules)
    for a, b in zip(sync(images, training=True)[0], plain(images, training=True)[0]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)


def test_lite_variants_use_relu6_and_no_squeeze_excite():
    cfg = compose(["model=efficientdet-lite0", "data=shapes"])
    model = build_model(cfg.model, cfg.data.num_classes)
    names = [v.name for v in model.variables]
    assert not any("/se/" in n for n in names)
    assert model.backbone.stem.activation is tf.nn.relu6


@pytest.mark.parametrize("size_in, size_out", [(4, 8), (3, 5), (5, 10), (2, 3), (2, 6)])
def test_upsampling_equals_tensorflows_nearest_resize(size_in, size_out):
    from effdet.model.bifpn import upsample_nearest

    x = tf.random.uniform([2, size_in, size_in + 1, 3])
    expected = tf.image.resize(x, [size_out, size_out + 2], method="nearest")
    np.testing.assert_array_equal(upsample_nearest(x, size_out, size_out + 2).numpy(), expected.numpy())
