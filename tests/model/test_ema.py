import os

import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import ConfigError
from effdet.model.ema import ExponentialMovingAverage


def hand_ema(initial, values, decay, warmup, first_step=0):
    """The shadow after one update per value, at steps first_step, first_step + 1, ..."""
    shadow = initial
    for index, value in enumerate(values):
        step = first_step + index
        d = min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay
        shadow = d * shadow + (1.0 - d) * value
    return shadow


def run_updates(ema, variable, values, first_step=0):
    for index, value in enumerate(values):
        variable.assign(value)
        ema.update(first_step + index)
    return float(ema.shadow_variables[0])


def test_shadow_starts_as_a_float32_copy_with_the_same_shape():
    kernel = tf.Variable(np.arange(6, dtype=np.float32).reshape(2, 3), name="kernel")
    half = tf.Variable(tf.constant([1.5, 2.5], tf.float16), name="half")
    ema = ExponentialMovingAverage([kernel, half])
    assert [tuple(s.shape) for s in ema.shadow_variables] == [(2, 3), (2,)]
    assert all(s.dtype == tf.float32 for s in ema.shadow_variables)
    assert not any(s.trainable for s in ema.shadow_variables)
    np.testing.assert_array_equal(ema.shadow_variables[0].numpy(), kernel.numpy())
    np.testing.assert_array_equal(ema.shadow_variables[1].numpy(), [1.5, 2.5])
    assert ema.shadow_variables[0].name == "kernel/ExponentialMovingAverage:0"
    assert ema.trainable_variables == ()
    with pytest.raises(ConfigError, match="decay"):
        ExponentialMovingAverage([kernel], decay=1.5)
    with pytest.raises(TypeError, match="non-floating"):
        ExponentialMovingAverage([tf.Variable(3)])


def test_update_with_warmup_matches_hand_computation():
    variable = tf.Variable(0.0)
    ema = ExponentialMovingAverage([variable], decay=0.9998, warmup=True)
    values = [1.0, 2.0, 3.0, -1.0]
    # decays 1/10, 2/11, 3/12, 4/13: warm-up dominates, the shadow follows the values closely
    assert run_updates(ema, variable, values) == pytest.approx(hand_ema(0.0, values, 0.9998, True), rel=1e-6)
    assert float(ema.decay_at(0)) == pytest.approx(0.1)
    assert float(ema.decay_at(2)) == pytest.approx(0.25)
    assert float(ema.decay_at(10 ** 7)) == pytest.approx(0.9998)


def test_update_without_warmup_matches_hand_computation():
    variable = tf.Variable(4.0)
    ema = ExponentialMovingAverage([variable], decay=0.5, warmup=False)
    values = [2.0, 6.0, 0.0]
    result = run_updates(ema, variable, values)
    assert result == pytest.approx(((4.0 * 0.5 + 1.0) * 0.5 + 3.0) * 0.5, rel=1e-6)  # 2.0
    assert result == pytest.approx(hand_ema(4.0, values, 0.5, False), rel=1e-6)
    assert float(ema.decay_at(0)) == pytest.approx(0.5)


def test_update_in_tf_function_with_an_int64_step_equals_eager():
    eager_variable, traced_variable = tf.Variable(1.0), tf.Variable(1.0)
    eager_ema = ExponentialMovingAverage([eager_variable], decay=0.9)
    traced_ema = ExponentialMovingAverage([traced_variable], decay=0.9)
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def train_step(value):
        traced_variable.assign(value)
        decay = traced_ema.update(step)
        step.assign_add(1)
        return decay

    values = [3.0, 5.0, -2.0, 7.0, 0.5, 9.0, 1.0, 4.0, 2.0, 8.0, 6.0, 3.0, 5.0]
    for index, value in enumerate(values):
        decay = train_step(tf.constant(value))
        assert float(decay) == pytest.approx(min(0.9, (1 + index) / (10 + index)))
        eager_variable.assign(value)
        eager_ema.update(index)
    assert float(traced_ema.shadow_variables[0]) == float(eager_ema.shadow_variables[0])
    assert float(traced_ema.shadow_variables[0]) == pytest.approx(hand_ema(1.0, values, 0.9, True), rel=1e-5)


def test_swap_evaluates_with_averages_and_restores_exact_training_values():
    rng = np.random.default_rng(0)
    kernel = tf.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    moving_mean = tf.Variable(rng.normal(size=(3,)).astype(np.float32), trainable=False)
    ema = ExponentialMovingAverage([kernel, moving_mean], decay=0.7, warmup=False)
    for step in range(3):
        kernel.assign_add(rng.normal(size=(4, 3)).astype(np.float32) * 0.1)
        moving_mean.assign(moving_mean * 0.9 + 0.3)
        ema.update(step)
    training = [kernel.numpy().copy(), moving_mean.numpy().copy()]
    averages = [s.numpy().copy() for s in ema.shadow_variables]
    assert not np.array_equal(training[0], averages[0])

    with ema.swap():
        np.testing.assert_array_equal(kernel.numpy(), averages[0])
        np.testing.assert_array_equal(moving_mean.numpy(), averages[1])
    np.testing.assert_array_equal(kernel.numpy(), training[0])
    np.testing.assert_array_equal(moving_mean.numpy(), training[1])

    with pytest.raises(ZeroDivisionError):
        with ema.swap():
            1 / 0
    np.testing.assert_array_equal(kernel.numpy(), training[0])  # restored on an exception too
    np.testing.assert_array_equal(ema.shadow_variables[0].numpy(), averages[0])  # averages untouched


def test_copy_to_other_variables():
    source = tf.Variable([1.0, 2.0])
    ema = ExponentialMovingAverage([source], decay=0.5, warmup=False)
    source.assign([3.0, 6.0])
    ema.update(0)
    target = tf.Variable([0.0, 0.0])
    ema.copy_to([target])
    np.testing.assert_allclose(target.numpy(), [2.0, 4.0])
    np.testing.assert_array_equal(source.numpy(), [3.0, 6.0])
    with pytest.raises(ValueError):
        ema.copy_to([tf.Variable([0.0, 0.0, 0.0])])


def test_checkpoint_saves_and_restores_only_the_averages(tmp_path):
    weights = tf.Variable([1.0, -1.0], name="weights")
    ema = ExponentialMovingAverage([weights], decay=0.5, warmup=False)
    weights.assign([5.0, 3.0])
    ema.update(0)
    expected = ema.shadow_variables[0].numpy().copy()  # [3, 1]
    np.testing.assert_allclose(expected, [3.0, 1.0])
    path = tf.train.Checkpoint(ema=ema).write(os.path.join(str(tmp_path), "ckpt"))
    saved = dict(tf.train.list_variables(path))
    assert [name for name in saved if name.startswith("ema/")] == \
        ["ema/shadow_variables/0/.ATTRIBUTES/VARIABLE_VALUE"]

    fresh_weights = tf.Variable([0.0, 0.0], name="weights")
    fresh = ExponentialMovingAverage([fresh_weights], decay=0.5, warmup=False)
    tf.train.Checkpoint(ema=fresh).read(path).assert_consumed()
    np.testing.assert_array_equal(fresh.shadow_variables[0].numpy(), expected)
    np.testing.assert_array_equal(fresh_weights.numpy(), [0.0, 0.0])  # model weights not in the EMA's part


def test_averages_a_keras_layer_including_batch_norm_statistics():
    layer = tf.keras.layers.BatchNormalization(momentum=0.0)
    layer.build((None, 2))
    ema = ExponentialMovingAverage(layer.trainable_variables + [layer.moving_mean, layer.moving_variance],
                                   decay=0.5, warmup=False)
    layer(tf.constant([[2.0, 4.0], [4.0, 8.0]]), training=True)  # momentum 0: stats = batch stats
    ema.update(0)
    np.testing.assert_allclose(ema.shadow_variables[2].numpy(), [1.5, 3.0])  # (0 + [3, 6]) / 2
    with ema.swap():
        np.testing.assert_allclose(layer.moving_mean.numpy(), [1.5, 3.0])
    np.testing.assert_allclose(layer.moving_mean.numpy(), [3.0, 6.0])
