"""Target assignment against anchors and IoUs computed by hand on a tiny image."""
import numpy as np
import pytest
import tensorflow as tf

from effdet.data.targets import BACKGROUND, IGNORE, AnchorLabeler, flatten_levels, pairwise_iou
from effdet.model.box_coder import encode


def test_pairwise_iou_by_hand():
    a = tf.constant([[0.0, 0.0, 10.0, 10.0]])
    b = tf.constant([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 5.0]])
    np.testing.assert_allclose(pairwise_iou(a, b).numpy(), [[1.0, 25 / 175, 0.0, 0.5]], rtol=1e-6)


def labeler():
    # A 64x64 image, level 3 only (8x8 positions, stride 8), one square anchor per position: anchor_scale 2
    # gives 16x16 anchors centred at (4 + 8i, 4 + 8j): position (0, 0) is [-4, -4, 12, 12].
    return AnchorLabeler((64, 64), 3, 3, num_scales=1, aspect_ratios=[1.0], anchor_scale=2.0)


def test_the_anchor_grid_is_as_computed_by_hand():
    anchors = labeler().anchors.numpy()
    assert anchors.shape == (64, 4)
    np.testing.assert_allclose(anchors[0], [-4, -4, 12, 12])
    np.testing.assert_allclose(anchors[9], [4, 4, 20, 20])  # row 1, column 1


def test_a_box_equal_to_an_anchor_matches_it_and_its_good_neighbours():
    # Box = anchor (1, 1) = [4, 4, 20, 20]. Its IoU with the anchor one step right, [4, 12, 20, 28], is
    # 8*16 / (2*256 - 128) = 1/3 < 0.5: only anchor (1, 1) is positive.
    targets = labeler().label(tf.constant([[4.0, 4.0, 20.0, 20.0]]), tf.constant([3]), tf.constant([False]))
    cls = targets["cls_targets_3"].numpy()[..., 0]
    assert cls[1, 1] == 2  # dataset id 3 → class index 2
    assert (cls == BACKGROUND).sum() == 63
    assert float(targets["num_positives"]) == 1.0
    np.testing.assert_allclose(targets["box_targets_3"].numpy()[1, 1], [0, 0, 0, 0], atol=1e-6)


def test_iou_at_the_threshold_matches_and_box_targets_encode_the_offset():
    # Box [4, 4, 20, 28] (16 x 24): IoU with anchor (1, 1) = 256 / 384 = 2/3, with anchor (1, 2) = [4, 12, 20, 28]
    # also 256 / 384 = 2/3: both positive. The box centre (12, 16) vs anchor (1, 1) centre (12, 12):
    # ty = 0, tx = 4 / 16, th = log(16 / 16) = 0, tw = log(24 / 16).
    targets = labeler().label(tf.constant([[4.0, 4.0, 20.0, 28.0]]), tf.constant([1]), tf.constant([False]))
    cls = targets["cls_targets_3"].numpy()[..., 0]
    assert sorted(zip(*np.nonzero(cls >= 0))) == [(1, 1), (1, 2)]
    np.testing.assert_allclose(targets["box_targets_3"].numpy()[1, 1], [0, 0.25, 0, np.log(1.5)], atol=1e-5)


def test_a_small_object_still_claims_its_best_anchor():
    # A 4x4 box inside anchor (2, 2): IoU 16/256 < 0.5, yet it is matched to that anchor.
    targets = labeler().label(tf.constant([[18.0, 18.0, 22.0, 22.0]]), tf.constant([2]), tf.constant([False]))
    cls = targets["cls_targets_3"].numpy()[..., 0]
    assert cls[2, 2] == 1 and (cls >= 0).sum() == 1


def test_crowd_boxes_are_ignored_not_learned_as_background():
    crowd = tf.constant([[0.0, 0.0, 32.0, 32.0]])
    targets = labeler().label(crowd, tf.constant([1]), tf.constant([True]))
    cls = targets["cls_targets_3"].numpy()[..., 0]
    assert (cls >= 0).sum() == 0 and float(targets["num_positives"]) == 0
    # anchors (i, j) with i, j in 0..2 have ≥ half their area inside [0, 32]²; (3, 3) = [20, 20, 36, 36]: 144/256
    assert (cls[:3, :3] == IGNORE).all() and cls[3, 3] == IGNORE and cls[5, 5] == BACKGROUND


def test_an_image_without_objects_is_all_background():
    targets = labeler().label(tf.zeros([0, 4]), tf.zeros([0], tf.int32), tf.zeros([0], tf.bool))
    assert (targets["cls_targets_3"].numpy() == BACKGROUND).all()
    assert float(targets["num_positives"]) == 0


def test_levels_split_in_head_order_and_flatten_back():
    full = AnchorLabeler((128, 128), 3, 7, 3, [1.0, 2.0, 0.5], 4.0)
    targets = full.label(tf.constant([[10.0, 10.0, 60.0, 50.0], [64.0, 64.0, 128.0, 128.0]]), tf.constant([1, 2]),
                         tf.constant([False, False]))
    assert targets["cls_targets_3"].shape == (16, 16, 9) and targets["box_targets_7"].shape == (1, 1, 36)
    batched = {k: v[None] for k, v in targets.items() if k != "num_positives"}
    flat = flatten_levels(batched, "cls_targets", 3, 7, 1)
    assert flat.shape == (1, full.anchors.shape[0], 1)
    assert int(tf.reduce_sum(tf.cast(flat >= 0, tf.int32))) == int(targets["num_positives"])
    assert set(np.unique(flat.numpy())) <= {BACKGROUND, 0, 1}


@pytest.mark.parametrize("num_boxes", [1, 5, 40])
def test_labeling_runs_inside_a_graph(num_boxes):
    full = AnchorLabeler((128, 128), 3, 7, 3, [1.0, 2.0, 0.5], 4.0)
    corners = tf.sort(tf.random.uniform([num_boxes, 2, 2], 0, 128, seed=1), axis=1)
    boxes = tf.reshape(tf.transpose(corners, [0, 2, 1]), [num_boxes, 4])
    boxes = tf.stack([boxes[:, 0], boxes[:, 2], boxes[:, 1], boxes[:, 3]], 1)
    labelled = tf.function(full.label)(boxes, tf.ones([num_boxes], tf.int32), tf.zeros([num_boxes], tf.bool))
    assert float(labelled["num_positives"]) >= 1


def reference_labels(anchors, boxes, classes, is_crowd, threshold=0.5):
    """The plain all-pairs definition, in numpy float32: what AnchorLabeler's fast path must equal."""
    n = len(anchors)
    a_ymin, a_xmin, a_ymax, a_xmax = (anchors[:, k][None] for k in range(4))
    b_ymin, b_xmin, b_ymax, b_xmax = (boxes[:, k][:, None] for k in range(4))
    height = np.maximum(np.minimum(b_ymax, a_ymax) - np.maximum(b_ymin, a_ymin), np.float32(0))
    width = np.maximum(np.minimum(b_xmax, a_xmax) - np.maximum(b_xmin, a_xmin), np.float32(0))
    intersection = height * width
    box_area = np.maximum(b_ymax - b_ymin, np.float32(0)) * np.maximum(b_xmax - b_xmin, np.float32(0))
    iou = intersection / (box_area + (a_ymax - a_ymin) * (a_xmax - a_xmin) - intersection)
    iou[is_crowd] = -1
    best_box = np.full(n, -1)
    if len(boxes):
        above = iou.max(axis=0) >= threshold
        best_box[above] = iou.argmax(axis=0)[above]
    return iou, best_box


def tie_order(labeler):
    """Rank of each anchor in (level, shape, row, column) order: how the labeler breaks an object's ties."""
    keys, start = [], 0
    for index, (height, width) in enumerate(labeler.level_shapes.values()):
        shapes = labeler.anchors_per_location
        rows, cols, shape = np.meshgrid(np.arange(height), np.arange(width), np.arange(shapes), indexing="ij")
        keys.append(np.stack([np.full(rows.size, index), shape.ravel(), rows.ravel(), cols.ravel()], 1))
        start += rows.size
    keys = np.concatenate(keys)
    return np.lexsort(keys.T[::-1]).argsort()


@pytest.mark.parametrize("scene", range(12))
def test_fast_labeling_equals_the_plain_all_pairs_definition(scene):
    full = AnchorLabeler((128, 160), 3, 6, 3, [1.0, 2.0, 0.5], 4.0)
    anchors = full.anchors.numpy()
    rng = np.random.default_rng(scene)
    m = [0, 1, 3, 8, 20, 35][scene % 6]
    y0, x0 = rng.uniform(-10, 120, m), rng.uniform(-10, 150, m)
    h = rng.uniform(1, 90, m) * rng.uniform(0.2, 1, m)
    boxes = np.stack([y0, x0, y0 + h, x0 + h * rng.uniform(0.3, 3, m)], 1).astype(np.float32)
    if m > 2:
        boxes[1] = boxes[0]  # a duplicate annotation: identical IoUs, so ties everywhere
        boxes[2] = anchors[100]  # exactly an anchor
    classes = rng.integers(1, 6, m).astype(np.int32)
    is_crowd = (rng.uniform(size=m) < 0.15) if scene % 2 else np.zeros(m, bool)
    got = full.label(tf.constant(boxes.reshape(-1, 4)), tf.constant(classes), tf.constant(is_crowd))
    cls = flatten_levels({k: v[None] for k, v in got.items()}, "cls_targets", 3, 6, 1).numpy().ravel()
    box = flatten_levels({k: v[None] for k, v in got.items()}, "box_targets", 3, 6, 4).numpy()[0]

    iou, best_box = reference_labels(anchors, boxes.reshape(-1, 4), classes, is_crowd)
    order = tie_order(full)
    for index in range(m):  # each usable object claims its best anchor, even below the threshold
        if not is_crowd[index] and iou[index].max() > 0:
            tied = np.flatnonzero(iou[index] == iou[index].max())
            best_box[tied[np.argmin(order[tied])]] = index
    matched = best_box >= 0
    crowd = boxes.reshape(-1, 4)[is_crowd]
    expected_cls = np.full(len(anchors), BACKGROUND)
    if len(crowd):
        inside = pairwise_intersection(anchors, crowd) / area(anchors)[:, None]
        expected_cls[(inside >= 0.5).any(axis=1)] = IGNORE
    expected_cls[matched] = classes[best_box[matched]] - 1
    np.testing.assert_array_equal(cls, expected_cls)
    expected_box = np.zeros_like(anchors)
    if matched.any():
        expected_box[matched] = encode(boxes[best_box[matched]], anchors[matched]).numpy()
    np.testing.assert_allclose(box, expected_box, rtol=1e-5, atol=1e-5)
    assert float(got["num_positives"]) == matched.sum()


def area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pairwise_intersection(a, b):
    height = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    width = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    return height * width
