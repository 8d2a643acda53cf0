"""Post-processing on hand-made anchors and outputs whose surviving detections are known by hand.

Three anchors on one level (1 x 3 positions, 1 anchor each), two classes, zero box regressions (so every
box is its anchor):

    a0 = [0, 0, 10, 10]    class 0: 0.9      class 1: 0.0001 (below the 0.001 score threshold)
    a1 = [0, 2, 10, 12]    class 0: 0.8      class 1: 0.7
    a2 = [20, 20, 30, 30]  class 0: 0.0005   class 1: 0.6

IoU(a0, a1) = (10·8) / (100 + 100 - 80) = 2/3 > 0.5, so hard NMS drops (a1, class 0) under (a0, class 0),
but keeps (a1, class 1): NMS is per class. Soft-NMS with sigma 0.5 instead decays 0.8 to
0.8·exp(-(2/3)² / 0.5) = 0.8·exp(-8/9).
"""
import numpy as np
import pytest
import tensorflow as tf

from effdet.eval.postprocess import flatten_outputs, input_extent, postprocess, top_k_pairs
from effdet.model.anchors import anchor_boxes
from effdet.model.box_coder import encode

ANCHORS = np.array([[0, 0, 10, 10], [0, 2, 10, 12], [20, 20, 30, 30]], np.float32)
PROBS = np.array([[0.9, 0.0001], [0.8, 0.7], [0.0005, 0.6]])
IOU_01 = 2 / 3
SOFT_08 = 0.8 * np.exp(-IOU_01 ** 2 / 0.5)


def logit(p):
    p = np.asarray(p, np.float64)
    return np.log(p / (1 - p)).astype(np.float32)


def outputs(probs_per_image, codes=None):
    """Per-level lists with a single level [B, 1, 3, A*C] (A = 1, C = 2) and [B, 1, 3, 4]."""
    batch = len(probs_per_image)
    class_outputs = [tf.constant(logit(np.stack(probs_per_image)).reshape(batch, 1, 3, 2))]
    if codes is None:
        codes = np.zeros([batch, 3, 4], np.float32)
    box_outputs = [tf.constant(np.asarray(codes, np.float32).reshape(batch, 1, 3, 4))]
    return class_outputs, box_outputs


def run(probs=PROBS, scales=(1.0,), codes=None, **kwargs):
    class_outputs, box_outputs = outputs([probs] * len(scales), codes)
    result = postprocess(class_outputs, box_outputs, ANCHORS, tf.constant(scales, tf.float32), 2, **kwargs)
    return {key: value.numpy() for key, value in result.items()}


def test_hard_nms_suppresses_same_class_overlap_but_keeps_other_class():
    result = run(nms="hard", iou_threshold=0.5)
    assert result["num_detections"].tolist() == [3]
    np.testing.assert_allclose(result["scores"][0, :3], [0.9, 0.7, 0.6], rtol=1e-5)
    assert result["classes"][0, :3].tolist() == [1, 2, 2]  # dataset ids = class index + 1
    np.testing.assert_allclose(result["boxes"][0, :3], ANCHORS[[0, 1, 2]], atol=1e-4)


def test_outputs_are_zero_padded_to_max_detections():
    result = run(nms="hard")
    assert result["boxes"].shape == (1, 100, 4)
    assert result["scores"].shape == (1, 100) and result["classes"].shape == (1, 100)
    assert result["scores"].dtype == np.float32 and result["classes"].dtype == np.int32
    assert not result["boxes"][0, 3:].any() and not result["scores"][0, 3:].any()
    assert not result["classes"][0, 3:].any()


def test_hard_nms_keeps_an_overlap_below_the_iou_threshold():
    # IoU 2/3 does not exceed 0.7: (a1, class 0) survives.
    result = run(nms="hard", iou_threshold=0.7)
    assert result["num_detections"].tolist() == [4]
    np.testing.assert_allclose(result["scores"][0, :4], [0.9, 0.8, 0.7, 0.6], rtol=1e-5)


def test_soft_nms_decays_the_overlapping_score_by_the_gaussian_by_hand():
    result = run(nms="soft", soft_nms_sigma=0.5)
    assert result["num_detections"].tolist() == [4]
    # 0.8·exp(-8/9) = 0.3289: decayed, not removed, and now ranked last.
    np.testing.assert_allclose(result["scores"][0, :4], [0.9, 0.7, 0.6, SOFT_08], rtol=1e-5)
    assert result["classes"][0, :4].tolist() == [1, 2, 2, 1]
    np.testing.assert_allclose(result["boxes"][0, 3], ANCHORS[1], atol=1e-4)
    # Boxes of the other class and the non-overlapping box are not decayed at all.
    np.testing.assert_allclose(result["scores"][0, 1:3], [0.7, 0.6], rtol=1e-6)


def test_soft_nms_sigma_convention():
    # sigma 0.25 → 0.8·exp(-(4/9) / 0.25); TF's own convention would give 0.8·exp(-(4/9) / 0.5).
    result = run(nms="soft", soft_nms_sigma=0.25)
    np.testing.assert_allclose(result["scores"][0, 3], 0.8 * np.exp(-IOU_01 ** 2 / 0.25), rtol=1e-5)


def test_soft_nms_with_sigma_zero_is_hard_nms():
    soft = run(nms="soft", soft_nms_sigma=0.0, iou_threshold=0.5)
    hard = run(nms="hard", iou_threshold=0.5)
    for key in hard:
        np.testing.assert_array_equal(soft[key], hard[key])


def test_soft_nms_drops_a_score_decayed_below_the_threshold():
    result = run(nms="soft", soft_nms_sigma=0.5, score_threshold=0.5)
    np.testing.assert_allclose(result["scores"][0, :3], [0.9, 0.7, 0.6], rtol=1e-5)
    assert result["num_detections"].tolist() == [3]


def test_score_threshold_is_respected():
    result = run(nms="hard", score_threshold=0.65)
    assert result["num_detections"].tolist() == [2]
    np.testing.assert_allclose(result["scores"][0, :2], [0.9, 0.7], rtol=1e-5)
    # The 0.0001 and 0.0005 scores never appear under the default 0.001 either.
    everything = run(nms="soft", soft_nms_sigma=100.0)
    assert everything["num_detections"].tolist() == [4]
    assert everything["scores"][0, :4].min() > 0.001


def test_max_detections_keeps_the_best():
    result = run(nms="hard", max_detections=2)
    assert result["boxes"].shape == (1, 2, 4)
    assert result["num_detections"].tolist() == [2]
    np.testing.assert_allclose(result["scores"][0], [0.9, 0.7], rtol=1e-5)
    assert result["classes"][0].tolist() == [1, 2]


def test_pre_nms_top_k_applies_before_nms():
    # Only the two best pairs, 0.9 and 0.8, reach NMS, where 0.8 is suppressed by 0.9.
    result = run(nms="hard", pre_nms_top_k=2)
    assert result["num_detections"].tolist() == [1]
    np.testing.assert_allclose(result["scores"][0, :1], [0.9], rtol=1e-5)


def test_boxes_map_back_to_the_original_image():
    # image_scale 0.5: the model input is half the original size, so boxes double.
    result = run(nms="hard", scales=(0.5,))
    np.testing.assert_allclose(result["boxes"][0, :3], 2 * ANCHORS[[0, 1, 2]], atol=1e-4)
    clipped = postprocess(*outputs([PROBS]), ANCHORS, [0.5], 2, original_sizes=[[50, 21]])
    np.testing.assert_allclose(clipped["boxes"].numpy()[0, 1], [0, 4, 20, 21], atol=1e-4)


def test_box_regressions_are_decoded_and_clipped_to_the_input():
    target = np.array([[[0, 0, 10, 10], [0, 2, 10, 12], [16, 20, 36, 30]]], np.float32)
    codes = encode(tf.constant(target), tf.constant(ANCHORS)).numpy()  # only a2 moves: ty 0.1, th log 2
    np.testing.assert_allclose(codes[0, 2], [0.1, 0.0, np.log(2.0), 0.0], atol=1e-6)
    roomy = run(nms="hard", codes=codes, image_size=(40, 40))
    np.testing.assert_allclose(roomy["boxes"][0, 2], [16, 20, 36, 30], atol=1e-4)
    # By default the input extent is read off the anchors: centres 5 … 25 → 30 x 30.
    np.testing.assert_allclose(input_extent(tf.constant(ANCHORS)).numpy(), [30, 30])
    clipped = run(nms="hard", codes=codes)
    np.testing.assert_allclose(clipped["boxes"][0, 2], [16, 20, 30, 30], atol=1e-4)


def test_input_extent_of_real_anchors():
    anchors = anchor_boxes((512, 384), 3, 7)
    np.testing.assert_allclose(input_extent(tf.constant(anchors)).numpy(), [512, 384], atol=1e-3)


def test_batch_of_two_under_tf_function():
    probs_b = PROBS[:, ::-1].copy()  # image 1: classes swapped
    class_outputs, box_outputs = outputs([PROBS, probs_b])

    @tf.function
    def detect(class_outputs, box_outputs, scales):
        return postprocess(class_outputs, box_outputs, ANCHORS, scales, 2, nms="hard", max_detections=5)

    result = detect(class_outputs, box_outputs, tf.constant([1.0, 0.5]))
    result = {key: value.numpy() for key, value in result.items()}
    assert result["boxes"].shape == (2, 5, 4)
    assert result["num_detections"].tolist() == [3, 3]
    np.testing.assert_allclose(result["scores"][:, :3], [[0.9, 0.7, 0.6]] * 2, rtol=1e-5)
    assert result["classes"][:, :3].tolist() == [[1, 2, 2], [2, 1, 1]]
    np.testing.assert_allclose(result["boxes"][0, :3], ANCHORS, atol=1e-4)
    np.testing.assert_allclose(result["boxes"][1, :3], 2 * ANCHORS, atol=1e-4)
    # A second trace-free call with other values reuses the graph.
    again = detect(class_outputs, box_outputs, tf.constant([2.0, 1.0]))
    np.testing.assert_allclose(again["boxes"].numpy()[1, :3], ANCHORS, atol=1e-4)
    assert detect.experimental_get_tracing_count() == 1


def test_flatten_outputs_orders_level_position_anchor_class():
    # Two anchors, three classes: level 3 is 2x2, level 4 is 1x1; values count up in anchor order.
    level3 = tf.reshape(tf.range(24, dtype=tf.float32), [1, 2, 2, 6])
    level4 = tf.reshape(tf.range(24, 30, dtype=tf.float32), [1, 1, 1, 6])
    flat = flatten_outputs([level3, level4], 3).numpy()
    np.testing.assert_array_equal(flat, np.arange(30, dtype=np.float32).reshape(1, 10, 3))


def test_two_stage_top_k_equals_a_single_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 200, 15)).astype(np.float32)
    logits[0, 7] += 10.0  # all 15 classes of one anchor among the best
    logits[1, :, 3] += 5.0  # one class dominating everywhere
    for k in (1, 20, 150, 5000):
        values, anchor_indices, class_indices = [t.numpy() for t in top_k_pairs(tf.constant(logits), k)]
        expected = tf.math.top_k(logits.reshape(2, -1), k=min(k, 3000)).values.numpy()
        np.testing.assert_array_equal(np.sort(values, axis=1), np.sort(expected, axis=1))
        picked = logits[np.arange(2)[:, None], anchor_indices, class_indices]
        np.testing.assert_array_equal(picked, values)


def test_rejects_unknown_nms():
    with pytest.raises(ValueError, match="nms"):
        run(nms="fancy")
