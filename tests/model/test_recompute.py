"""trainer.recompute: the same training step as without it (loss, gradients, batch-norm statistics, drop-connect
masks), with each chosen block's forward pass run again inside the gradient."""
import numpy as np
import pytest
import tensorflow as tf

from effdet.model import EfficientDet
from effdet.model.builder import create_variables
from effdet.model.efficientnet import MBConvBlock
from effdet.model.layers import ACTIVATIONS, NormFactory
from effdet.model.recompute import RECOMPUTE_SCOPES, random_streams, recomputed_layers, set_recompute
from effdet.train.builder import set_precision

SIZE = 64


def small_detector(scope: str, weights=None):
    """EfficientNet-B0 (squeeze-excite, swish) under a narrow BiFPN and heads, drop-connect on everywhere."""
    model = EfficientDet("small", "efficientnet-b0", 3, fpn_num_filters=16, fpn_cell_repeats=2, box_class_repeats=2,
                         max_level=6, backbone_drop_connect_rate=0.5, head_survival_prob=0.5)
    create_variables(model)
    if weights is not None:
        model.set_weights(weights)
    set_recompute(model, scope)
    return model


def training_step(model):
    """A traced step: the network's outputs against fixed random targets, the gradient of every trainable
    variable."""
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 255, [2, SIZE, SIZE, 3]), tf.float32)

    @tf.function(autograph=False)
    def step(images):
        with tf.GradientTape() as tape:
            classes, boxes = model(images, training=True)
            outputs = [tf.cast(x, tf.float32) for x in classes + boxes]
            probes = [tf.constant(rng.normal(size=x.shape), tf.float32) for x in outputs]
            loss = tf.add_n([tf.reduce_sum(x * p) + 0.1 * tf.reduce_sum(tf.square(x)) for x, p in zip(outputs, probes)])
        return loss, tape.gradient(loss, model.trainable_variables)

    tf.random.set_seed(3)  # the step's drop-connect seed comes from this graph-level seed
    return step(images)


def assert_same_gradients(got, want, variables, tolerance):
    """Equal up to summation order: within `tolerance` of each variable's largest gradient, and of the largest
    of all for the gradients that are zero but for rounding (a bias before batch norm)."""
    largest = max(np.abs(w).max() for w in want)
    for g, w, variable in zip(got, want, variables):
        np.testing.assert_allclose(g, w, rtol=0, atol=tolerance * np.abs(w).max() + 1e-5 * largest,
                                   err_msg=getattr(variable, "name", variable))


def moving_statistics(model):
    return {v.name: v.numpy() for v in model.non_trainable_variables if "moving" in v.name}


@pytest.fixture(scope="module")
def reference():
    tf.keras.utils.set_random_seed(0)
    model = small_detector("none")
    weights = model.get_weights()
    before = moving_statistics(model)
    loss, gradients = training_step(model)
    return weights, before, float(loss), [g.numpy() for g in gradients], moving_statistics(model)


def count_forward_traces(layers, monkeypatch):
    """How often each layer's forward computation is traced (once per pass it runs in)."""
    counts = {id(layer): 0 for layer in layers}
    for layer in layers:
        name = "_tower" if hasattr(layer, "_tower") else "_forward"

        def counted(*args, _original=getattr(layer, name), _layer=layer, **kwargs):
            counts[id(_layer)] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(layer, name, counted)
    return counts


@pytest.mark.parametrize("scope", ["backbone", "all"])
def test_one_step_with_recomputation_is_the_step_without(scope, reference, monkeypatch):
    weights, before, loss, gradients, statistics = reference
    model = small_detector(scope, weights)
    parts = recomputed_layers(model, scope)
    chosen = [layer for layers in parts.values() for layer in layers]
    others = [layer for layers in recomputed_layers(model, "all").values() for layer in layers
              if all(layer is not c for c in chosen)]
    traces = count_forward_traces(chosen + others, monkeypatch)

    got_loss, got_gradients = training_step(model)

    # every chosen block ran twice, the second time in the gradient; the others once
    heads = [id(model.class_net), id(model.box_net)]
    levels = model.max_level - model.min_level + 1
    for layer in chosen:
        assert traces[id(layer)] == 2 * (levels if id(layer) in heads else 1), layer.name
    for layer in others:
        assert traces[id(layer)] == (levels if id(layer) in heads else 1), layer.name
    np.testing.assert_allclose(float(got_loss), loss, rtol=1e-5)
    assert_same_gradients([g.numpy() for g in got_gradients], gradients, model.trainable_variables, 2e-4)
    # batch norm's moving statistics moved once, as without recomputation (twice would move them further)
    after = moving_statistics(model)
    assert any(not np.allclose(after[name], before[name]) for name in after)
    for name, value in statistics.items():
        np.testing.assert_allclose(after[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_drop_connect_draws_new_masks_every_step(reference):
    """The masks are the same in both passes of a step, but not the same from one step to the next."""
    weights = reference[0]
    model = small_detector("all", weights)
    images = tf.constant(np.random.default_rng(2).uniform(0, 255, [2, SIZE, SIZE, 3]), tf.float32)

    @tf.function(autograph=False)
    def outputs(images):
        classes, _ = model(images, training=True)
        return tf.add_n([tf.reduce_sum(tf.square(x)) for x in classes])

    first, second = float(outputs(images)), float(outputs(images))
    assert first != second  # batch statistics are the same: only the masks differ


def test_mixed_bfloat16_block_step_is_the_step_without_recomputation():
    """One block (a deep network's bfloat16 gradients at random initialisation are mostly rounding, with or
    without recomputation): bfloat16 activations, float32 variables and gradients."""
    results = {}
    try:
        set_precision("mixed_bfloat16")
        tf.keras.utils.set_random_seed(0)
        block = MBConvBlock(16, 16, 3, 1, 6, 0.25, 0.5, ACTIVATIONS.get("swish"), NormFactory(), name="block")
        images = tf.random.normal([4, 16, 16, 16])
        block(images, training=False)
        weights = block.get_weights()
        for recompute in (False, True):
            block.set_weights(weights)
            block.recompute = recompute

            @tf.function(autograph=False)
            def step(x):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = block(x, training=True)
                    loss = tf.reduce_sum(tf.square(tf.cast(y, tf.float32) - 0.5))
                return y, loss, tape.gradient(loss, [x] + block.trainable_variables)

            tf.random.set_seed(5)
            y, loss, gradients = step(images)
            assert y.dtype == tf.bfloat16 and all(g.dtype == tf.float32 for g in gradients)
            results[recompute] = float(loss), [g.numpy() for g in gradients], moving_statistics(block)
    finally:
        set_precision("fp32")
    (loss, gradients, statistics), (got_loss, got_gradients, got_statistics) = results[False], results[True]
    # bfloat16 keeps 8 bits of mantissa, and the graph optimizer fuses the two graphs' ops differently
    np.testing.assert_allclose(got_loss, loss, rtol=1e-2)
    for got, want in zip(got_gradients, gradients):
        assert np.linalg.norm(got - want) <= 0.05 * np.linalg.norm(want)
    for name, value in statistics.items():
        np.testing.assert_allclose(got_statistics[name], value, rtol=2e-2, atol=1e-3, err_msg=name)


def test_scopes_choose_the_blocks_and_none_turns_everything_off():
    model = small_detector("backbone")
    everything = recomputed_layers(model, "all")
    assert [layer.recompute for layer in everything["backbone"]] == [True] * (1 + len(model.backbone.blocks))
    assert not any(layer.recompute for layer in everything["bifpn"] + everything["heads"])
    set_recompute(model, "all")
    assert all(layer.recompute for layers in everything.values() for layer in layers)
    set_recompute(model, "none")
    assert not any(layer.recompute for layers in everything.values() for layer in layers)
    assert RECOMPUTE_SCOPES == ("none", "backbone", "all")
    with pytest.raises(ValueError, match="backbone, all"):
        set_recompute(model, "heads")


def test_an_xla_compiled_block_recomputes_the_same_gradients():
    """trainer.xla=true compiles the forward and backward pass: the recomputation's data dependency on the
    upstream gradient holds there too (XLA drops control dependencies)."""
    tf.keras.utils.set_random_seed(0)
    block = MBConvBlock(16, 16, 3, 1, 6, 0.25, 0.5, ACTIVATIONS.get("swish"), NormFactory(), name="block")
    images = tf.random.normal([4, 8, 8, 16])
    block(images, training=False)
    weights = block.get_weights()
    results = []
    for recompute in (False, True):
        block.set_weights(weights)
        block.recompute = recompute

        @tf.function(jit_compile=True, autograph=False)
        def step(x, seed):
            with tf.GradientTape() as tape:
                tape.watch(x)
                with random_streams(seed):
                    loss = tf.reduce_sum(tf.square(block(x, training=True) - 0.5))
            return loss, tape.gradient(loss, [x] + block.trainable_variables)

        loss, gradients = step(images, tf.constant([4, 2]))
        results.append((float(loss), [g.numpy() for g in gradients], moving_statistics(block)))
    (loss, gradients, statistics), (got_loss, got_gradients, got_statistics) = results
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    assert_same_gradients(got_gradients, gradients, ["x"] + [v.name for v in block.trainable_variables], 1e-4)
    for name, value in statistics.items():
        np.testing.assert_allclose(got_statistics[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
