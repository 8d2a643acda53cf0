import numpy as np
import pytest
import tensorflow as tf

from effdet.model import box_coder
from effdet.model.anchors import anchor_boxes, num_anchors_per_level


def test_d0_anchor_count_and_first_anchors():
    anchors = anchor_boxes((512, 512), 3, 7)
    assert anchors.shape == (49104, 4)
    assert sum(num_anchors_per_level((512, 512), 3, 7, 9).values()) == 49104
    # level 3: stride 8, first center (4, 4), anchor_scale 4 → a 32-pixel square
    np.testing.assert_allclose(anchors[0], [-12, -12, 20, 20])
    # aspect 2.0 is twice as wide as high, with the square's area
    ymin, xmin, ymax, xmax = anchors[1]
    assert (xmax - xmin) / (ymax - ymin) == pytest.approx(2.0)
    assert (xmax - xmin) * (ymax - ymin) == pytest.approx(32 * 32)
    # second scale octave: 2 ** (1/3) larger
    ymin, xmin, ymax, xmax = anchors[3]
    assert ymax - ymin == pytest.approx(32 * 2 ** (1 / 3))


def test_anchor_order_is_position_then_scale_then_aspect():
    anchors = anchor_boxes((64, 64), 3, 3, num_scales=1, aspect_ratios=[1.0])
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    np.testing.assert_allclose(centers[:3], [[4, 4], [4, 12], [4, 20]])  # row-major, x fastest
    assert len(anchors) == 64


def test_box_coder_round_trip_and_known_code():
    anchors = tf.constant([[0.0, 0.0, 10.0, 10.0], [10.0, 20.0, 30.0, 60.0]])
    boxes = tf.constant([[1.0, 1.0, 11.0, 11.0], [5.0, 20.0, 45.0, 60.0]])
    codes = box_coder.encode(boxes, anchors)
    np.testing.assert_allclose(codes[0].numpy(), [0.1, 0.1, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(codes[1].numpy(), [0.25, 0.0, np.log(2.0), 0.0], atol=1e-6)
    np.testing.assert_allclose(box_coder.decode(codes, anchors).numpy(), boxes.numpy(), atol=1e-4)
