"""The losses against their textbook definitions: values and gradients, computed another way."""
import numpy as np
import pytest
import tensorflow as tf

from effdet.data.targets import IGNORE, AnchorLabeler
from effdet.model.layers import swish
from effdet.train.losses import DetectionLoss, FocalLossSum

NUM_CLASSES = 4


def textbook_focal(logits, one_hot, alpha, gamma, label_smoothing):
    """Lin et al.'s formula as written, for autodiff."""
    p = tf.sigmoid(logits)
    p_t = one_hot * p + (1 - one_hot) * (1 - p)
    alpha_t = one_hot * alpha + (1 - one_hot) * (1 - alpha)
    smoothed = one_hot * (1 - label_smoothing) + 0.5 * label_smoothing
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    modulating = tf.pow(1 - p_t, gamma) if gamma else tf.ones_like(p_t)  # pow's gradient at 0**0 is NaN
    return alpha_t * modulating * cross_entropy


def random_logits_and_labels(seed, anchors=300):
    rng = np.random.default_rng(seed)
    logits = rng.normal(-2.0, 3.0, (2, anchors, NUM_CLASSES))
    logits[0, :4] = [[-120.0, 120.0, -30.0, 30.0]] * 4  # saturated sigmoids in float32
    labels = rng.integers(-2, NUM_CLASSES, (2, anchors))  # -2 ignore, -1 background, else a class
    labels[0, :4] = [0, 1, -1, IGNORE]
    return logits, labels


@pytest.mark.parametrize("gamma,label_smoothing,jit", [
    (1.5, 0.0, False), (1.5, 0.0, True), (2.0, 0.1, False), (0.0, 0.0, False), (1.0, 0.0, False),
    (2.5, 0.1, True)])
def test_focal_loss_sum_and_its_gradient_follow_the_textbook_formula(gamma, label_smoothing, jit):
    logits, labels = random_logits_and_labels(seed=int(gamma * 10))
    kept = (labels != IGNORE)[..., None]

    x64 = tf.constant(logits)  # the reference in float64, where nothing saturates
    with tf.GradientTape() as tape:
        tape.watch(x64)
        one_hot = tf.one_hot(labels, NUM_CLASSES, dtype=tf.float64)
        expected = tf.reduce_sum(textbook_focal(x64, one_hot, 0.25, gamma, label_smoothing) * kept)
    expected_gradient = tape.gradient(expected, x64).numpy()

    x32 = tf.constant(logits, tf.float32)
    focal = FocalLossSum(NUM_CLASSES, 0.25, gamma, label_smoothing, jit_compile=jit)
    with tf.GradientTape() as tape:
        tape.watch(x32)
        value = focal(x32, tf.constant(labels, tf.int32))
    gradient = tape.gradient(value, x32).numpy()

    assert np.isfinite(gradient).all()
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=1e-6)
    assert np.all(gradient[~np.broadcast_to(kept, gradient.shape)] == 0)  # ignored anchors teach nothing


def labeled_batch(seed):
    """Per-level outputs of a fake network, and the labeler's targets for two images with boxes."""
    labeler = AnchorLabeler((64, 64), 3, 5, 3, [1.0, 2.0, 0.5], 4.0)
    scenes = [([[4.0, 6.0, 30.0, 40.0], [20.0, 20.0, 60.0, 50.0], [10.0, 10.0, 14.0, 13.0]], [0, 3, 1]),
              ([[32.0, 32.0, 63.0, 63.0], [0.0, 0.0, 40.0, 40.0]], [2, 2])]  # the second is a crowd
    per_image = [labeler.label(tf.constant(boxes), tf.constant(classes), tf.constant([False, i == 1] + [False] *
                                                                                    (len(classes) - 2)))
                 for i, (boxes, classes) in enumerate(scenes)]
    targets = {key: tf.stack([t[key] for t in per_image]) for key in per_image[0]}
    rng = np.random.default_rng(seed)
    class_outputs = [tf.constant(rng.normal(-3, 2, (2, s, s, 9 * NUM_CLASSES)), tf.float32) for s in (8, 4, 2)]
    box_outputs = [tf.constant(rng.normal(0, 0.3, (2, s, s, 9 * 4)), tf.float32) for s in (8, 4, 2)]
    return class_outputs, box_outputs, targets


def flat_reference(class_outputs, box_outputs, targets, box_loss_weight=50.0):
    """All levels concatenated first, the textbook focal loss, and Keras's Huber loss."""
    logits = tf.concat([tf.reshape(c, [2, -1, NUM_CLASSES]) for c in class_outputs], axis=1)
    boxes = tf.concat([tf.reshape(b, [2, -1, 4]) for b in box_outputs], axis=1)
    labels = tf.concat([tf.reshape(targets[f"cls_targets_{level}"], [2, -1]) for level in (3, 4, 5)], axis=1)
    box_targets = tf.concat([tf.reshape(targets[f"box_targets_{level}"], [2, -1, 4]) for level in (3, 4, 5)], 1)
    normalizer = tf.reduce_sum(tf.cast(targets["num_positives"], tf.float32)) + 1.0
    focal = textbook_focal(logits, tf.one_hot(labels, NUM_CLASSES), 0.25, 1.5, 0.0)
    class_loss = tf.reduce_sum(focal * tf.cast(labels != IGNORE, tf.float32)[..., None]) / normalizer
    huber = tf.keras.losses.Huber(delta=0.1, reduction=tf.keras.losses.Reduction.NONE)(
        box_targets[..., None], boxes[..., None])
    box_loss = tf.reduce_sum(huber * tf.cast(labels >= 0, tf.float32)[..., None]) / normalizer / 4.0
    return {"class_loss": class_loss, "box_loss": box_loss, "det_loss": class_loss + box_loss_weight * box_loss}


@pytest.mark.parametrize("jit", [False, True])
def test_detection_loss_level_by_level_equals_the_flat_definition(jit):
    class_outputs, box_outputs, targets = labeled_batch(seed=3)
    assert int(tf.reduce_sum(targets["num_positives"])) > 0
    assert any(int(tf.reduce_sum(tf.cast(targets[f"cls_targets_{level}"] == IGNORE, tf.int32))) > 0
               for level in (3, 4, 5))
    outputs = class_outputs + box_outputs
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(outputs)
        losses = DetectionLoss(NUM_CLASSES, 3, 5, jit_compile=jit)((class_outputs, box_outputs), targets)
        expected = flat_reference(class_outputs, box_outputs, targets)
    for key in ("class_loss", "box_loss", "det_loss"):
        np.testing.assert_allclose(float(losses[key]), float(expected[key]), rtol=1e-5, err_msg=key)
    for got, want in zip(tape.gradient(losses["det_loss"], outputs), tape.gradient(expected["det_loss"], outputs)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-7)


class TwinWorkers:
    """Two workers holding the same batch: a sum over them doubles a value. Counts the collectives."""
    size = 2

    def __init__(self):
        self.sums = 0

    def sum(self, value):
        self.sums += 1
        return 2 * value

    def size_tensor(self):
        return tf.constant(float(self.size))


class ElasticTwins:
    """An elastic group of workers holding the same batch, whose number changes under a traced step."""

    def __init__(self):
        self.count = tf.Variable(2.0)

    def sum(self, value):
        return self.count * value

    def size_tensor(self):
        return tf.identity(self.count)


def test_each_worker_loss_is_normalized_by_the_global_batch_with_one_collective():
    class_outputs, box_outputs, targets = labeled_batch(seed=4)
    twins = TwinWorkers()
    mine = DetectionLoss(NUM_CLASSES, 3, 5, workers=twins, jit_compile=False)((class_outputs, box_outputs), targets)
    doubled = [tf.concat([t, t], 0) for t in class_outputs], [tf.concat([t, t], 0) for t in box_outputs]
    global_batch = DetectionLoss(NUM_CLASSES, 3, 5, jit_compile=False)(
        doubled, {k: tf.concat([v, v], 0) for k, v in targets.items()})
    # averaged over the two workers (as their gradients are), the loss is the one of the global batch
    for key in ("class_loss", "box_loss", "det_loss"):
        np.testing.assert_allclose(float(mine[key]), float(global_batch[key]), rtol=1e-5, err_msg=key)
    assert twins.sums == 1  # the positive count; the worker count is known without asking the others


def test_the_loss_reads_the_number_of_workers_when_it_runs_not_when_it_is_traced():
    """An elastic job's step is traced once and runs on however many workers there are (effdet/train/elastic.py):
    traced with two, run with three, the loss is still the one of the three workers' global batch."""
    class_outputs, box_outputs, targets = labeled_batch(seed=4)
    workers = ElasticTwins()
    loss = tf.function(DetectionLoss(NUM_CLASSES, 3, 5, workers=workers, jit_compile=False).__call__)
    for count in (2, 3):
        workers.count.assign(float(count))
        mine = loss((class_outputs, box_outputs), targets)
        copies = [tf.concat([t] * count, 0) for t in class_outputs], [tf.concat([t] * count, 0) for t in box_outputs]
        global_batch = DetectionLoss(NUM_CLASSES, 3, 5, jit_compile=False)(
            copies, {k: tf.concat([v] * count, 0) for k, v in targets.items()})
        for key in ("class_loss", "box_loss", "det_loss"):
            np.testing.assert_allclose(float(mine[key]), float(global_batch[key]), rtol=1e-5, err_msg=key)
    assert loss.experimental_get_tracing_count() == 1


def test_swish_gradient_equals_silus():
    x = tf.constant(np.concatenate([np.linspace(-30, 30, 601), [-120.0, 120.0, 0.0]]), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, reference = swish(x), tf.nn.silu(x)
    np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tape.gradient(ours, x).numpy(), tape.gradient(reference, x).numpy(),
                               rtol=1e-5, atol=1e-7)
