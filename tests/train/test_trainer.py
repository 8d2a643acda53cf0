"""The training loop on tiny models: it learns, it guards against NaN, it is deterministic, it resumes."""
import numpy as np
import pytest
import tensorflow as tf

from effdet.data.fake import FakeInput
from effdet.data.targets import AnchorLabeler
from effdet.hardware.workers import Workers
from effdet.model import EfficientDet
from effdet.model.builder import create_variables
from effdet.model.recompute import set_recompute
from effdet.train.builder import set_precision
from effdet.model.ema import ExponentialMovingAverage
from effdet.train.losses import DetectionLoss
from effdet.train.optim import build_optimizer, build_schedule
from effdet.train.hooks import History, build_hooks
from effdet.train.trainer import NonFiniteLossError, Trainer, TrainSettings

SIZE = 64
# Graph optimisation pays off over a long run, not over the few steps of a test: skip it here.
tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})


def tiny_model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    model = EfficientDet("tiny", "efficientnet-lite0", 3, fpn_num_filters=16, fpn_cell_repeats=1, box_class_repeats=1,
                         max_level=5, backbone_drop_connect_rate=0.0)
    create_variables(model)
    return model


class TinyDetector(tf.keras.Model):
    """Class and box outputs on levels 3-5 from a few convolutions: a detector XLA compiles in seconds on the
    CPU (EfficientDet's backbone alone takes minutes)."""

    def __init__(self, num_classes=3, anchors_per_location=9):
        super().__init__()
        self.stem = tf.keras.layers.Conv2D(8, 3, strides=8, padding="same")
        self.norm = tf.keras.layers.BatchNormalization()
        self.downs = [tf.keras.layers.Conv2D(8, 3, strides=2, padding="same") for _ in range(2)]
        self.classes = tf.keras.layers.Conv2D(anchors_per_location * num_classes, 3, padding="same")
        self.boxes = tf.keras.layers.Conv2D(anchors_per_location * 4, 3, padding="same")

    def call(self, images, training=False):
        features = [tf.nn.relu(self.norm(self.stem(tf.cast(images, tf.float32) / 255.0), training=training))]
        for down in self.downs:
            features.append(tf.nn.relu(down(features[-1])))
        return [self.classes(f) for f in features], [self.boxes(f) for f in features]


def tiny_detector(seed=0):
    tf.keras.utils.set_random_seed(seed)
    model = TinyDetector()
    model(tf.zeros([1, SIZE, SIZE, 3], tf.uint8))
    return model


def make_trainer(tmp_path, total_steps=20, lr=0.005, on_nonfinite="stop", seed=0, checkpoint_every=1000,
                 loss_fn=None, loss_scaling=False, xla=False, make_model=None, corrupt=None, steps_per_loop=5,
                 workers=None, track_position=False):
    model = (make_model or tiny_model)(seed)
    labeler = AnchorLabeler((SIZE, SIZE), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    schedule = build_schedule("cosine", base_lr=lr, warmup_init=lr, warmup_steps=0, total_steps=total_steps)
    optimizer = build_optimizer("adam", schedule, jit_compile=False)
    if loss_scaling:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    ema = ExponentialMovingAverage(model.trainable_variables, decay=0.9)
    settings = TrainSettings(total_steps=total_steps, steps_per_epoch=10, batch_size=2, log_every_n_steps=5,
                             checkpoint_every_n_steps=checkpoint_every, on_nonfinite=on_nonfinite,
                             progress_bar=False, steps_per_loop=steps_per_loop, loss_scaling=loss_scaling, xla=xla)
    loss_fn = loss_fn or DetectionLoss(3, 3, 5, jit_compile=False)
    trainer = Trainer(model, loss_fn, optimizer, ema, workers or Workers(), str(tmp_path),
                      settings, learning_rate=schedule, corrupt=corrupt, track_position=track_position)
    trainer.restore_or_start()
    data = FakeInput(labeler, 3, seed=seed)
    if track_position:  # an elastic job's input: one order, from the place the last step ended at
        return trainer, lambda step: data.train_stream(2, position=int(trainer.position))
    return trainer, lambda step: data.train(2)


def fit(trainer, data, *more_hooks):
    """One training run with the usual hooks: (the fit's summary, its history entries)."""
    hooks = build_hooks(trainer) + list(more_hooks)
    summary = trainer.fit(data, hooks)
    return summary, next(hook for hook in hooks if isinstance(hook, History)).entries


def test_overfitting_one_batch_drives_the_loss_down_tenfold(tmp_path):
    trainer, data = make_trainer(tmp_path, total_steps=150, lr=0.01)
    _, history = fit(trainer, data)
    losses = [entry["det_loss"] for entry in history]
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_a_fixed_seed_gives_identical_loss_sequences(tmp_path):
    """The loop's own randomness (initial weights, data, shuffling) follows the seed. That a whole EfficientDet
    job reruns identically is test_sweep's rerun test."""
    tf.config.experimental.enable_op_determinism()
    runs = []
    for name in ("a", "b"):
        trainer, data = make_trainer(tmp_path / name, total_steps=10, seed=3, make_model=tiny_detector)
        runs.append([entry["total_loss"] for entry in fit(trainer, data)[1]])
    assert runs[0] == runs[1]


def test_recomputation_trains_as_without_it_over_loops_of_several_steps(tmp_path):
    """trainer.recompute inside the compiled loop (tf.while_loop over steps_per_loop steps), with the optimizer,
    the weight decay and the EMA: the same losses and weights."""
    runs = {}
    for scope in ("none", "all"):
        def model(seed, scope=scope):
            network = tiny_model(seed)
            set_recompute(network, scope)
            return network

        trainer, data = make_trainer(tmp_path / scope, total_steps=2, steps_per_loop=2, make_model=model)
        history = fit(trainer, data)[1]
        runs[scope] = ([entry["total_loss"] for entry in history],
                       [v.numpy() for v in trainer.model.variables + list(trainer.ema.shadow_variables)])
    assert len(runs["all"][0]) == 1
    np.testing.assert_allclose(runs["all"][0], runs["none"][0], rtol=1e-5)
    for got, want in zip(runs["all"][1], runs["none"][1]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


class PoisonedLoss(DetectionLoss):
    """NaN from step `at` on: what a diverging run looks like."""

    def __init__(self, at, step_variable_holder):
        super().__init__(3, 3, 5, jit_compile=False)
        self.at, self.holder = at, step_variable_holder

    def __call__(self, outputs, targets):
        losses = super().__call__(outputs, targets)
        poisoned = tf.where(self.holder["step"] >= self.at, tf.constant(np.nan), 0.0)
        losses["det_loss"] = losses["det_loss"] + poisoned
        return losses


def test_a_non_finite_loss_stops_training_naming_the_step_and_last_checkpoint(tmp_path):
    holder = {}
    trainer, data = make_trainer(tmp_path, total_steps=20, checkpoint_every=5, loss_fn=PoisonedLoss(7, holder),
                                 make_model=tiny_detector)  # the loop's logic: any model will do
    holder["step"] = trainer.step
    with pytest.raises(NonFiniteLossError) as caught:
        fit(trainer, data)
    message = str(caught.value)
    assert "step 10" in message and "ckpt-5" in message
    # the bad update was never applied: the weights are finite and nothing non-finite was saved
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)
    assert trainer.manager.latest_checkpoint.endswith("ckpt-5")


def test_skip_mode_counts_and_skips_non_finite_steps(tmp_path):
    holder = {}
    trainer, data = make_trainer(tmp_path, total_steps=10, on_nonfinite="skip", loss_fn=PoisonedLoss(7, holder),
                                 make_model=tiny_detector)
    holder["step"] = trainer.step
    before = None
    summary, _ = fit(trainer, data)
    assert summary["skipped_steps"] == 3 and summary["step"] == 10
    assert all(np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)
    del before


def test_resume_restores_step_optimizer_and_ema_and_continues(tmp_path):
    first, data = make_trainer(tmp_path, total_steps=10, checkpoint_every=5, make_model=tiny_detector)
    fit(first, data)
    weights = [v.numpy() for v in first.model.variables]
    shadows = [v.numpy() for v in first.ema.shadow_variables]
    iterations = int(first.optimizer.iterations)
    # other initial weights: all must be restored
    second, data = make_trainer(tmp_path, total_steps=15, seed=9, make_model=tiny_detector)
    assert int(second.step) == 10 and int(second.optimizer.iterations) == iterations
    for restored, saved in zip(second.model.variables, weights):
        np.testing.assert_array_equal(restored.numpy(), saved)
    for restored, saved in zip(second.ema.shadow_variables, shadows):
        np.testing.assert_array_equal(restored.numpy(), saved)
    assert fit(second, data)[0]["step"] == 15


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_with_finite_numerics_and_float32_weights(tmp_path, precision):
    loss_scaling = set_precision(precision)
    try:
        trainer, data = make_trainer(tmp_path, total_steps=10, lr=0.01, loss_scaling=loss_scaling)
        assert trainer.model.compute_dtype == precision.split("_")[1]
        _, history = fit(trainer, data)
    finally:
        set_precision("fp32")
    assert all(np.isfinite(entry["total_loss"]) for entry in history)
    assert history[-1]["total_loss"] < history[0]["total_loss"]
    assert int(trainer.skipped_steps) == 0  # an overflowing float16 step lowers the loss scale, it is no NaN
    assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()).all() for v in trainer.model.trainable_variables)
    if loss_scaling:
        assert isinstance(trainer.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)


def test_xla_compiled_steps_train_like_the_plain_ones(tmp_path):
    runs = []
    for xla in (False, True):
        trainer, data = make_trainer(tmp_path / str(xla), total_steps=10, seed=2, xla=xla, make_model=tiny_detector)
        runs.append([entry["total_loss"] for entry in fit(trainer, data)[1]])
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-3)
    assert runs[1][-1] < runs[1][0]


def test_an_elastic_trainer_keeps_the_input_place_after_its_last_step_and_resumes_there(tmp_path, caplog):
    """With track_position (hardware.elastic), the trainer holds the place in the input's order after the last
    example trained, in its checkpoints too; a checkpoint of a job that was not elastic goes on from the start
    of the epoch its step had reached."""
    from effdet.data.pipeline import POSITIONS_PER_EPOCH

    first, data = make_trainer(tmp_path / "elastic", total_steps=6, make_model=tiny_detector, checkpoint_every=6,
                               track_position=True)
    fit(first, data)
    assert int(first.position) == 6 * 2  # six steps of two examples, on one worker
    resumed, _ = make_trainer(tmp_path / "elastic", total_steps=8, make_model=tiny_detector, track_position=True)
    assert int(resumed.step) == 6 and int(resumed.position) == 12
    plain, data = make_trainer(tmp_path / "plain", total_steps=25, make_model=tiny_detector, checkpoint_every=25)
    fit(plain, data)
    caplog.set_level("WARNING")
    elastic, _ = make_trainer(tmp_path / "plain", total_steps=30, make_model=tiny_detector, track_position=True)
    assert int(elastic.step) == 25 and int(elastic.position) == 2 * POSITIONS_PER_EPOCH  # 10 steps an epoch
    assert "was written without hardware.elastic: the input starts again at the beginning of epoch 2" in caplog.text
