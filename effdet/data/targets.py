"""Anchor target assignment: which anchor learns which object, and what box it regresses to."""
from typing import Dict, Tuple

import tensorflow as tf

from effdet.model import box_coder
from effdet.model.anchors import anchor_boxes
from effdet.model.efficientdet import feature_sizes

BACKGROUND = -1  # class target of an anchor that matches nothing: a negative for the focal loss
IGNORE = -2  # class target of an anchor that neither loss sees (crowd regions, padding)


def pairwise_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """[N, 4] × [M, 4] (ymin, xmin, ymax, xmax) → [N, M] intersection over union."""
    intersection = _intersection(boxes_a, boxes_b)
    area_a = _area(boxes_a)[:, None]
    area_b = _area(boxes_b)[None, :]
    union = area_a + area_b - intersection
    return tf.where(union > 0, intersection / tf.maximum(union, 1e-8), tf.zeros_like(intersection))


def _area(boxes):
    return tf.maximum(boxes[:, 2] - boxes[:, 0], 0.0) * tf.maximum(boxes[:, 3] - boxes[:, 1], 0.0)


def _intersection(boxes_a, boxes_b):
    ymin = tf.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    xmin = tf.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    ymax = tf.minimum(boxes_a[:, None, 2], boxes_b[None, :, 2])
    xmax = tf.minimum(boxes_a[:, None, 3], boxes_b[None, :, 3])
    return tf.maximum(ymax - ymin, 0.0) * tf.maximum(xmax - xmin, 0.0)


class AnchorLabeler:
    """Labels every anchor of one image from its ground truth.

    An anchor matches the object it overlaps most when that IoU is at least `match_threshold`; every object
    also claims its best anchor, so that small or odd-shaped objects are never left without one. Anchors
    that match nothing are background, except those mostly inside a crowd box, which are ignored.
    """

    def __init__(self, image_size: Tuple[int, int], min_level: int, max_level: int, num_scales: int,
                 aspect_ratios, anchor_scale: float, match_threshold: float = 0.5):
        self.image_size = tuple(image_size)
        self.min_level, self.max_level = min_level, max_level
        self.anchors_per_location = num_scales * len(aspect_ratios)
        self.anchors = tf.constant(anchor_boxes(image_size, min_level, max_level, num_scales, aspect_ratios,
                                                anchor_scale))
        self.match_threshold = match_threshold
        # Everything about the anchors that labeling needs, computed once: [N] each.
        ymin, xmin, ymax, xmax = tf.unstack(self.anchors, axis=1)
        height, width = ymax - ymin, xmax - xmin
        self._corners = (ymin, xmin, ymax, xmax)
        self._area = height * width
        self._center = (ymin + height / 2, xmin + width / 2)
        self._size = (height + box_coder.EPSILON, width + box_coder.EPSILON)
        self._log_size = (tf.math.log(self._size[0]), tf.math.log(self._size[1]))
        sizes = feature_sizes(image_size, max_level)
        self.level_shapes = {level: sizes[level] for level in range(min_level, max_level + 1)}

    def label(self, boxes: tf.Tensor, classes: tf.Tensor, is_crowd: tf.Tensor) -> Dict[str, tf.Tensor]:
        """boxes [M, 4] in pixels of the model input, classes [M] dataset ids 1..num_classes, is_crowd [M].

        Returns per level `cls_targets_L` [H, W, A] int32 (class index 0.., or BACKGROUND / IGNORE) and
        `box_targets_L` [H, W, A*4], plus `num_positives` (a float scalar).
        """
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
        is_crowd = tf.reshape(tf.cast(is_crowd, tf.bool), [-1])
        num_anchors = tf.shape(self.anchors)[0]
        # A dummy last box that nothing matches keeps every reduction non-empty (images without objects).
        dummy = tf.shape(boxes)[0]
        padded_boxes = tf.concat([boxes, [[0.0, 0.0, 1.0, 1.0]]], 0)
        padded_classes = tf.concat([classes, [0]], 0)
        usable = tf.concat([tf.logical_not(is_crowd), [False]], 0)
        iou = self._iou_with_anchors(padded_boxes)  # [M + 1, N]: broadcasting runs along the long axis
        iou = tf.where(usable[:, None], iou, -tf.ones_like(iou))
        best_box = tf.argmax(iou, axis=0, output_type=tf.int32)
        matched = tf.reduce_max(iou, axis=0) >= self.match_threshold
        # Every object also claims its best anchor (ties: the first), even below the threshold.
        claims = tf.logical_and(usable, tf.reduce_max(iou, axis=1) > 0)
        claimed_anchor = tf.boolean_mask(tf.argmax(iou, axis=1, output_type=tf.int32), claims)
        claiming_box = tf.boolean_mask(tf.range(dummy + 1), claims)
        best_box = tf.tensor_scatter_nd_update(best_box, claimed_anchor[:, None], claiming_box)
        matched = tf.tensor_scatter_nd_update(matched, claimed_anchor[:, None], tf.ones_like(claiming_box) > 0)
        best_box = tf.where(matched, best_box, dummy)

        unmatched = tf.where(self._inside_crowd(boxes, is_crowd), IGNORE, BACKGROUND)
        cls_targets = tf.where(matched, tf.gather(padded_classes, best_box) - 1, unmatched)
        box_targets = tf.where(matched[:, None], self._encode(padded_boxes, best_box), tf.zeros([num_anchors, 4]))
        targets = self._split_levels(cls_targets, box_targets)
        targets["num_positives"] = tf.reduce_sum(tf.cast(matched, tf.float32))
        return targets

    def _iou_with_anchors(self, boxes):
        """[M, 4] boxes → [M, N] IoU with every anchor."""
        ymin, xmin, ymax, xmax = self._corners
        b_ymin, b_xmin, b_ymax, b_xmax = [c[:, None] for c in tf.unstack(boxes, axis=1)]
        height = tf.maximum(tf.minimum(b_ymax, ymax) - tf.maximum(b_ymin, ymin), 0.0)
        width = tf.maximum(tf.minimum(b_xmax, xmax) - tf.maximum(b_xmin, xmin), 0.0)
        intersection = height * width
        box_area = (tf.maximum(b_ymax - b_ymin, 0.0) * tf.maximum(b_xmax - b_xmin, 0.0))
        union = box_area + self._area - intersection
        return tf.where(union > 0, intersection / tf.maximum(union, 1e-8), tf.zeros_like(intersection))

    def _encode(self, boxes, index):
        """box_coder.encode of boxes[index] against every anchor, from a per-box table (M rows, not N)."""
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
        height, width = ymax - ymin, xmax - xmin
        table = tf.stack([ymin + height / 2, xmin + width / 2, tf.math.log(height + box_coder.EPSILON),
                          tf.math.log(width + box_coder.EPSILON)], axis=1)
        y, x, log_h, log_w = tf.unstack(tf.gather(table, index), axis=1)
        return tf.stack([(y - self._center[0]) / self._size[0], (x - self._center[1]) / self._size[1],
                         log_h - self._log_size[0], log_w - self._log_size[1]], axis=1)

    def _inside_crowd(self, boxes, is_crowd):
        """Anchors with at least half of their area inside a crowd box."""
        crowd_boxes = tf.boolean_mask(boxes, is_crowd)
        anchor_area = _area(self.anchors)[:, None]
        overlap = _intersection(self.anchors, crowd_boxes) / tf.maximum(anchor_area, 1e-8)
        return tf.reduce_any(overlap >= 0.5, axis=1)

    def _split_levels(self, cls_targets, box_targets):
        targets = {}
        start = 0
        for level, (height, width) in self.level_shapes.items():
            count = height * width * self.anchors_per_location
            targets[f"cls_targets_{level}"] = tf.reshape(
                cls_targets[start:start + count], [height, width, self.anchors_per_location])
            targets[f"box_targets_{level}"] = tf.reshape(
                box_targets[start:start + count], [height, width, self.anchors_per_location * 4])
            start += count
        return targets


def flatten_levels(targets: Dict[str, tf.Tensor], prefix: str, min_level: int, max_level: int,
                   last_dim: int) -> tf.Tensor:
    """Per-level [B, H, W, A*k] maps → [B, N, k], in anchor order."""
    parts = []
    for level in range(min_level, max_level + 1):
        value = targets[f"{prefix}_{level}"]
        parts.append(tf.reshape(value, [tf.shape(value)[0], -1, last_dim]))
    return tf.concat(parts, axis=1)
