import math
import os

import numpy as np
import pytest
import tensorflow as tf

from effdet.errors import ConfigError
from effdet.train.optim import (OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule,
                                scaled_learning_rate)

BASE = 0.16
INIT = 0.008
WARMUP = 100
TOTAL = 1000


def lr(schedule, step) -> float:
    return float(schedule(tf.constant(step, tf.int64)))


def test_registries_hold_the_documented_names():
    assert SCHEDULES.names() == ["cosine", "polynomial", "stepwise"]
    assert OPTIMIZERS.names() == ["adam", "sgd"]


def test_scaled_learning_rate_follows_the_linear_rule():
    assert scaled_learning_rate(0.08, 128) == pytest.approx(0.16)
    assert scaled_learning_rate(0.08, 64) == pytest.approx(0.08)
    assert scaled_learning_rate(0.08, 16) == pytest.approx(0.02)
    assert scaled_learning_rate(0.1, 32, reference_batch=16) == pytest.approx(0.2)
    with pytest.raises(ConfigError):
        scaled_learning_rate(0.08, 0)


@pytest.mark.parametrize("name", ["cosine", "stepwise", "polynomial"])
def test_warmup_is_linear_from_warmup_init_to_base_lr(name):
    schedule = build_schedule(name, base_lr=BASE, warmup_init=INIT, warmup_steps=WARMUP, total_steps=TOTAL)
    assert lr(schedule, 0) == pytest.approx(INIT, rel=1e-6)
    assert lr(schedule, 50) == pytest.approx((INIT + BASE) / 2, rel=1e-6)
    assert lr(schedule, 25) == pytest.approx(INIT + 0.25 * (BASE - INIT), rel=1e-6)
    assert lr(schedule, WARMUP) == pytest.approx(BASE, rel=1e-6)  # the decay starts from base_lr


def test_cosine_reaches_half_at_the_midpoint_and_zero_at_the_end():
    schedule = build_schedule("cosine", base_lr=BASE, warmup_init=INIT, warmup_steps=WARMUP,
                              total_steps=TOTAL)
    midpoint = (WARMUP + TOTAL) // 2  # 550
    assert lr(schedule, midpoint) == pytest.approx(BASE / 2, rel=1e-5)
    quarter = WARMUP + (TOTAL - WARMUP) // 4  # 325
    expected = 0.5 * BASE * (1 + math.cos(math.pi * 0.25))
    assert lr(schedule, quarter) == pytest.approx(expected, rel=1e-5)
    assert lr(schedule, TOTAL) == pytest.approx(0.0, abs=1e-9)
    assert lr(schedule, TOTAL + 500) == pytest.approx(0.0, abs=1e-9)  # no rise after the end


def test_stepwise_drops_at_the_default_boundaries():
    schedule = build_schedule("stepwise", base_lr=BASE, warmup_init=INIT, warmup_steps=90, total_steps=900)
    # defaults: drops by 10x at 2/3 (step 600) and by 100x at 8/9 (step 800)
    assert lr(schedule, 599) == pytest.approx(BASE, rel=1e-6)
    assert lr(schedule, 600) == pytest.approx(BASE * 0.1, rel=1e-6)
    assert lr(schedule, 799) == pytest.approx(BASE * 0.1, rel=1e-6)
    assert lr(schedule, 800) == pytest.approx(BASE * 0.01, rel=1e-6)
    assert lr(schedule, 5000) == pytest.approx(BASE * 0.01, rel=1e-6)


def test_stepwise_with_custom_boundaries():
    schedule = build_schedule("stepwise", base_lr=1.0, warmup_steps=0, total_steps=100,
                              boundaries=[0.5], factors=[0.3])
    assert lr(schedule, 0) == pytest.approx(1.0)
    assert lr(schedule, 49) == pytest.approx(1.0)
    assert lr(schedule, 50) == pytest.approx(0.3)


def test_polynomial_decay():
    schedule = build_schedule("polynomial", base_lr=BASE, warmup_init=INIT, warmup_steps=WARMUP,
                              total_steps=TOTAL)
    assert lr(schedule, 550) == pytest.approx(BASE * 0.5 ** 0.9, rel=1e-5)
    assert lr(schedule, 775) == pytest.approx(BASE * 0.25 ** 0.9, rel=1e-5)
    assert lr(schedule, TOTAL) == pytest.approx(0.0, abs=1e-9)
    linear = build_schedule("polynomial", base_lr=1.0, warmup_steps=0, total_steps=10, power=1.0)
    assert [round(lr(linear, s), 6) for s in (0, 3, 10)] == [1.0, 0.7, 0.0]


def test_without_warmup_the_decay_starts_at_step_zero():
    schedule = build_schedule("cosine", base_lr=1.0, warmup_steps=0, total_steps=100)
    assert lr(schedule, 0) == pytest.approx(1.0)
    assert lr(schedule, 50) == pytest.approx(0.5, rel=1e-5)


@pytest.mark.parametrize("name", ["cosine", "stepwise", "polynomial"])
def test_values_are_the_same_eagerly_and_in_tf_function_with_an_int64_variable(name):
    schedule = build_schedule(name, base_lr=BASE, warmup_init=INIT, warmup_steps=WARMUP, total_steps=TOTAL)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
    compiled = tf.function(lambda: schedule(step))
    steps = [0, 1, 37, 99, 100, 101, 550, 600, 667, 800, 889, 999, 1000, 1234]
    eager, traced = [], []
    for value in steps:
        step.assign(value)
        result = compiled()
        assert result.dtype == tf.float32
        traced.append(float(result))
        eager.append(float(schedule(step)))
    np.testing.assert_array_equal(eager, traced)
    # a pure function of the step: recomputing out of order (as after a resume) gives the same values
    np.testing.assert_array_equal([lr(schedule, s) for s in reversed(steps)], eager[::-1])
    assert schedule(5).dtype == tf.float32  # a Python int works too


@pytest.mark.parametrize("name", ["cosine", "stepwise", "polynomial"])
def test_get_config_round_trips(name):
    schedule = build_schedule(name, base_lr=BASE, warmup_init=INIT, warmup_steps=WARMUP, total_steps=TOTAL)
    config = schedule.get_config()
    assert config["base_lr"] == BASE and config["total_steps"] == TOTAL
    clone = type(schedule).from_config(config)
    assert clone.get_config() == config
    for step in (0, 60, 500, 700, 900):
        assert lr(clone, step) == lr(schedule, step)
    # serialisable by Keras, as an optimizer's get_config does
    assert tf.keras.optimizers.schedules.serialize(schedule)["config"] == config


def test_unknown_names_raise_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError) as schedule_error:
        build_schedule("cosin", base_lr=0.1, total_steps=10)
    message = str(schedule_error.value)
    assert "cosin" in message and "cosine, polynomial, stepwise" in message
    with pytest.raises(ConfigError) as optimizer_error:
        build_optimizer("rmsprop", 0.1)
    assert "adam, sgd" in str(optimizer_error.value)


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="warmup_steps"):
        build_schedule("cosine", base_lr=0.1, warmup_steps=10, total_steps=10)
    with pytest.raises(ConfigError, match="total_steps"):
        build_schedule("cosine", base_lr=0.1, total_steps=0)
    with pytest.raises(ConfigError, match="boundaries"):
        build_schedule("stepwise", base_lr=0.1, total_steps=10, boundaries=[0.8, 0.5], factors=[0.1, 0.01])
    with pytest.raises(ConfigError, match="factors"):
        build_schedule("stepwise", base_lr=0.1, total_steps=10, boundaries=[0.5], factors=[0.1, 0.01])
    with pytest.raises(ConfigError, match="power"):
        build_schedule("cosine", base_lr=0.1, total_steps=10, power=2.0)  # cosine takes no power
    with pytest.raises(ConfigError, match="beta_1"):
        build_optimizer("sgd", 0.1, beta_1=0.9)
    for clip in ("clipnorm", "global_clipnorm", "clipvalue"):
        with pytest.raises(ConfigError, match=clip):
            build_optimizer("sgd", 0.1, **{clip: 10.0})


def test_sgd_defaults_match_automl():
    optimizer = build_optimizer("sgd", 0.1)
    assert optimizer.momentum == pytest.approx(0.9)
    assert optimizer.nesterov is False
    assert optimizer.clipnorm is None and optimizer.global_clipnorm is None and optimizer.clipvalue is None
    assert build_optimizer("sgd", 0.1, momentum=0.5, nesterov=True).nesterov is True
    adam = build_optimizer("adam", 0.1)
    assert (adam.beta_1, adam.beta_2) == (0.9, 0.999)


def test_sgd_slots_exist_after_build_and_are_checkpointed_before_the_first_step(tmp_path):
    kernel = tf.Variable(tf.ones([3, 2]), name="kernel")
    bias = tf.Variable(tf.zeros([2]), name="bias")
    schedule = build_schedule("cosine", base_lr=0.1, warmup_init=0.01, warmup_steps=5, total_steps=50)
    optimizer = build_optimizer("sgd", schedule)
    optimizer.build([kernel, bias])
    assert [tuple(m.shape) for m in optimizer.momentums] == [(3, 2), (2,)]
    assert int(optimizer.iterations) == 0
    optimizer.momentums[0].assign(tf.fill([3, 2], 0.25))
    path = tf.train.Checkpoint(optimizer=optimizer).write(os.path.join(str(tmp_path), "ckpt"))
    saved = dict(tf.train.list_variables(path))
    slot_shapes = sorted(tuple(shape) for name, shape in saved.items()
                         if name.startswith("optimizer/_variables/"))
    assert slot_shapes == [(2,), (3, 2)]

    # a fresh optimizer built on the same variables gets the slot values back before any step
    restored = build_optimizer("sgd", schedule)
    restored.build([kernel, bias])
    tf.train.Checkpoint(optimizer=restored).read(path).assert_consumed()
    np.testing.assert_array_equal(restored.momentums[0].numpy(), np.full([3, 2], 0.25, np.float32))


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_optimizer_decreases_a_quadratic_loss(name):
    target = tf.constant([1.0, -2.0, 3.0])
    weights = tf.Variable(tf.zeros([3]))
    schedule = build_schedule("cosine", base_lr=0.05, warmup_init=0.005, warmup_steps=5, total_steps=200)
    optimizer = build_optimizer(name, schedule)
    optimizer.build([weights])

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(weights - target))
        gradients = tape.gradient(loss, [weights])
        optimizer.apply_gradients(zip(gradients, [weights]))
        return loss

    losses = [float(train_step()) for _ in range(60)]
    assert losses[-1] < 0.1 * losses[0]
    assert int(optimizer.iterations) == 60
    # the rate the last update (at iteration 59) used: the schedule drives the optimizer
    assert float(optimizer.learning_rate) == pytest.approx(lr(schedule, 59), rel=1e-6)


def test_sgd_does_not_clip_large_gradients():
    weights = tf.Variable([0.0, 0.0])
    optimizer = build_optimizer("sgd", 0.1)
    optimizer.apply_gradients([(tf.constant([1000.0, -500.0]), weights)])
    # first step with momentum: velocity = -lr * g, so the update is exactly -lr * g
    np.testing.assert_allclose(weights.numpy(), [-100.0, 50.0], rtol=1e-6)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_elastic_jobs_learning_rate_follows_the_global_batch_of_the_workers_there_are(optimizer):
    """Planned for 3 workers of 8 images, then run by 2: the rate of every step is the one of a job planned with a
    global batch of 16 (the same linear rule), on the same steps, and a traced step reads it without tracing."""
    from effdet.train.builder import build_optimization
    from tests.conftest import compose

    optimizer_cfg = compose([f"optimizer={optimizer}"]).optimizer
    schedule, built = build_optimization(optimizer_cfg, 24, 50, 1000, False, elastic_workers=3)
    planned, _ = build_optimization(optimizer_cfg, 24, 50, 1000, False)
    smaller, _ = build_optimization(optimizer_cfg, 16, 50, 1000, False)
    assert built._learning_rate is schedule  # the optimizer steps with the scaled rate
    rate = tf.function(lambda step: schedule(step))
    steps = [0, 10, 60, 500, 999]
    for step in steps:
        assert float(rate(tf.constant(step, tf.int64))) == pytest.approx(lr(planned, step), rel=1e-6)
    schedule.set_workers(2)
    for step in steps:
        assert float(rate(tf.constant(step, tf.int64))) == pytest.approx(lr(smaller, step), rel=1e-6, abs=1e-12)
    assert rate.experimental_get_tracing_count() == 1
