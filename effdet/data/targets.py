"""Anchor target assignment: which anchor learns which object, and what box it regresses to."""
from typing import Dict, Tuple

import numpy as np
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

    Labeling runs once per training image on the CPU, so it is written for speed: on a level, an anchor's
    vertical extent depends only on its row and shape and its horizontal extent only on its column and
    shape, so the overlaps of M boxes with a level's A×H×W anchors are an outer product of [M, A, H] and
    [M, A, W] tables, and only matched anchors are box-encoded. Every IoU is computed with the same float
    operations as a plain all-pairs IoU, so matches are identical to it. Ties for an object's best anchor go to
    the first in (level, shape, row, column) order.
    """

    def __init__(self, image_size: Tuple[int, int], min_level: int, max_level: int, num_scales: int,
                 aspect_ratios, anchor_scale: float, match_threshold: float = 0.5):
        self.image_size = tuple(image_size)
        self.min_level, self.max_level = min_level, max_level
        self.anchors_per_location = num_scales * len(aspect_ratios)
        self.anchor_settings = dict(min_level=min_level, max_level=max_level, num_scales=num_scales,
                                    aspect_ratios=tuple(aspect_ratios), anchor_scale=anchor_scale)
        anchors = anchor_boxes(image_size, **self.anchor_settings)
        self.anchors = tf.constant(anchors)
        self.match_threshold = match_threshold
        sizes = feature_sizes(image_size, max_level)
        self.level_shapes = {level: sizes[level] for level in range(min_level, max_level + 1)}
        # Per level: rows' (ymin, ymax) [A, H], columns' (xmin, xmax) [A, W] and areas [A, H, W], cut from the
        # anchor table itself so that every value is bit for bit the one an all-pairs IoU would use. Shape-major
        # order keeps the long axis innermost: broadcasting along a short inner axis is several times slower.
        self._rows, self._columns, self._anchor_areas = [], [], []
        self._level_starts = [0]  # where each level's anchors begin in the anchor table, and the end
        for height, width in self.level_shapes.values():
            count = height * width * self.anchors_per_location
            self._level_starts.append(self._level_starts[-1] + count)
            start = self._level_starts[-2]
            grid = anchors[start:start + count].reshape(height, width, self.anchors_per_location, 4)
            ymin, ymax = grid[:, 0, :, 0].T, grid[:, 0, :, 2].T
            xmin, xmax = grid[0, :, :, 1].T, grid[0, :, :, 3].T
            self._rows.append((tf.constant(ymin), tf.constant(ymax)))
            self._columns.append((tf.constant(xmin), tf.constant(xmax)))
            self._anchor_areas.append(tf.constant((ymax - ymin)[:, :, None] * (xmax - xmin)[:, None, :]))
        # What encoding a matched anchor needs, [N] each.
        ymin, xmin, ymax, xmax = (anchors[:, k] for k in range(4))
        height, width = ymax - ymin, xmax - xmin
        self._center = tf.constant(np.stack([ymin + height / 2, xmin + width / 2], axis=1))
        size = np.stack([height + box_coder.EPSILON, width + box_coder.EPSILON], axis=1).astype(np.float32)
        self._size = tf.constant(size)
        self._log_size = tf.math.log(self._size)

    @property
    def coarsest_stride(self) -> int:
        """Input sizes that are multiples of this give every level whole cells (eval.padding=stride)."""
        return 2 ** self.max_level

    def anchors_at(self, image_size: Tuple[int, int]) -> tf.Tensor:
        """The anchors [N, 4] of an input of another size (eval.padding=stride), in the heads' output order."""
        if tuple(image_size) == self.image_size:
            return self.anchors
        return tf.constant(anchor_boxes(tuple(image_size), **self.anchor_settings))

    def best_iou(self, boxes: tf.Tensor) -> tf.Tensor:
        """Each box's highest IoU with any anchor ([M, 4] in pixels of the model input → [M]): what `label`
        compares with the match threshold. Boxes are independent, so any number of images' boxes go at once."""
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        return self._match(boxes, tf.ones([tf.shape(boxes)[0]], tf.bool))[2]

    def label(self, boxes: tf.Tensor, classes: tf.Tensor, is_crowd: tf.Tensor) -> Dict[str, tf.Tensor]:
        """boxes [M, 4] in pixels of the model input, classes [M] dataset ids 1..num_classes, is_crowd [M].

        Returns per level `cls_targets_L` [H, W, A] int32 (class index 0.., or BACKGROUND / IGNORE) and
        `box_targets_L` [H, W, A*4], plus `num_positives` (a float scalar).
        """
        boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])
        classes = tf.reshape(tf.cast(classes, tf.int32), [-1])
        is_crowd = tf.reshape(tf.cast(is_crowd, tf.bool), [-1])
        num_anchors = self.anchors.shape[0]
        # A dummy last box that nothing matches keeps every reduction non-empty (images without objects).
        dummy = tf.shape(boxes)[0]
        padded_boxes = tf.concat([boxes, [[0.0, 0.0, 1.0, 1.0]]], 0)
        padded_classes = tf.concat([classes, [0]], 0)
        usable = tf.concat([tf.logical_not(is_crowd), [False]], 0)

        matched_anchor, matched_box, box_best_iou, box_best_anchor = self._match(padded_boxes, usable)
        best_box = tf.tensor_scatter_nd_update(tf.fill([num_anchors], dummy), matched_anchor[:, None], matched_box)
        # Every object also claims its best anchor, even below the threshold.
        claims = tf.logical_and(usable, box_best_iou > 0)
        claimed_anchor = tf.boolean_mask(box_best_anchor, claims)
        claiming_box = tf.boolean_mask(tf.range(dummy + 1), claims)
        best_box = tf.tensor_scatter_nd_update(best_box, claimed_anchor[:, None], claiming_box)
        matched = best_box < dummy

        unmatched = tf.cond(tf.reduce_any(is_crowd),
                            lambda: tf.where(self._inside_crowd(boxes, is_crowd), IGNORE, BACKGROUND),
                            lambda: tf.fill([num_anchors], BACKGROUND))
        # Everything below touches only the positives; the dense [N] and [N, 4] maps are written once, per level.
        positives = tf.cast(tf.where(matched)[:, 0], tf.int32)
        positive_box = tf.gather(best_box, positives)
        positive_class = tf.gather(padded_classes, positive_box) - 1
        encoded = self._encode(padded_boxes, positive_box, positives)
        targets = {}
        level_of = tf.searchsorted(self._level_starts[1:], positives, side="right")
        for index, (level, (height, width)) in enumerate(self.level_shapes.items()):
            start, end = self._level_starts[index], self._level_starts[index + 1]
            mine = tf.equal(level_of, index)
            where = (tf.boolean_mask(positives, mine) - start)[:, None]
            cls = tf.tensor_scatter_nd_update(unmatched[start:end], where, tf.boolean_mask(positive_class, mine))
            box = tf.scatter_nd(where, tf.boolean_mask(encoded, mine), [end - start, 4])
            targets[f"cls_targets_{level}"] = tf.reshape(cls, [height, width, self.anchors_per_location])
            targets[f"box_targets_{level}"] = tf.reshape(box, [height, width, self.anchors_per_location * 4])
        targets["num_positives"] = tf.cast(tf.shape(positives)[0], tf.float32)
        return targets

    def _match(self, boxes, usable):
        """Anchors whose best IoU is at least the threshold [K] and their best box [K] (usable boxes only:
        others score ≤ 0); for every box, its best IoU [M] and first best anchor [M]."""
        b_ymin, b_xmin, b_ymax, b_xmax = [c[:, None, None] for c in tf.unstack(boxes, axis=1)]
        box_area = tf.maximum(b_ymax - b_ymin, 0.0) * tf.maximum(b_xmax - b_xmin, 0.0)  # [M, 1, 1]
        matched_anchor, matched_box, box_iou, box_anchor = [], [], [], []
        offset = 0
        for (ymin, ymax), (xmin, xmax), anchor_area in zip(self._rows, self._columns, self._anchor_areas):
            shapes, height, width = anchor_area.shape
            overlap_h = tf.maximum(tf.minimum(b_ymax, ymax) - tf.maximum(b_ymin, ymin), 0.0)  # [M, A, H]
            overlap_w = tf.maximum(tf.minimum(b_xmax, xmax) - tf.maximum(b_xmin, xmin), 0.0)  # [M, A, W]
            # Unusable boxes (crowd, the dummy) get a negative overlap, hence IoU ≤ 0: they never match.
            overlap_h = tf.where(usable[:, None, None], overlap_h, -1.0)
            intersection = overlap_h[..., None] * overlap_w[..., None, :]  # [M, A, H, W]
            # Anchors have positive area, so the union is never zero.
            iou = intersection / (box_area[..., None] + anchor_area - intersection)
            iou = tf.reshape(iou, [tf.shape(boxes)[0], -1])

            def anchor_order(index):  # [A, H, W] flat index → index in the anchor table ([H, W, A] order)
                return offset + (index % (height * width)) * shapes + index // (height * width)

            # An argmax over boxes for every anchor is slow; only the few anchors above the threshold need one.
            above = tf.cast(tf.where(tf.reduce_max(iou, axis=0) >= self.match_threshold)[:, 0], tf.int32)
            matched_anchor.append(anchor_order(above))
            matched_box.append(tf.argmax(tf.gather(iou, above, axis=1), axis=0, output_type=tf.int32))
            box_iou.append(tf.reduce_max(iou, axis=1))
            box_anchor.append(anchor_order(tf.argmax(iou, axis=1, output_type=tf.int32)))
            offset += shapes * height * width
        # Across levels, a box's best anchor is on the first level with the highest IoU.
        box_iou, box_anchor = tf.stack(box_iou, axis=1), tf.stack(box_anchor, axis=1)
        best_level = tf.argmax(box_iou, axis=1, output_type=tf.int32)
        return (tf.concat(matched_anchor, 0), tf.concat(matched_box, 0), tf.reduce_max(box_iou, axis=1),
                tf.gather(box_anchor, best_level, batch_dims=1))

    def _encode(self, boxes, box_index, anchor_index):
        """box_coder.encode of boxes[box_index] against anchors[anchor_index] → [K, 4]."""
        ymin, xmin, ymax, xmax = tf.unstack(tf.gather(boxes, box_index), axis=1)
        height, width = ymax - ymin, xmax - xmin
        center = tf.stack([ymin + height / 2, xmin + width / 2], axis=1)
        log_size = tf.math.log(tf.stack([height + box_coder.EPSILON, width + box_coder.EPSILON], axis=1))
        return tf.concat([(center - tf.gather(self._center, anchor_index)) / tf.gather(self._size, anchor_index),
                          log_size - tf.gather(self._log_size, anchor_index)], axis=1)

    def _inside_crowd(self, boxes, is_crowd):
        """Anchors with at least half of their area inside a crowd box."""
        crowd_boxes = tf.boolean_mask(boxes, is_crowd)
        anchor_area = _area(self.anchors)[:, None]
        overlap = _intersection(self.anchors, crowd_boxes) / tf.maximum(anchor_area, 1e-8)
        return tf.reduce_any(overlap >= 0.5, axis=1)

def flatten_levels(targets: Dict[str, tf.Tensor], prefix: str, min_level: int, max_level: int,
                   last_dim: int) -> tf.Tensor:
    """Per-level [B, H, W, A*k] maps → [B, N, k], in anchor order."""
    parts = []
    for level in range(min_level, max_level + 1):
        value = targets[f"{prefix}_{level}"]
        parts.append(tf.reshape(value, [tf.shape(value)[0], -1, last_dim]))
    return tf.concat(parts, axis=1)
