"""Faster R-CNN box coding: boxes relative to anchors as (ty, tx, th, tw), the heads' regression targets."""
import tensorflow as tf

EPSILON = 1e-8


def _centers(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    height, width = ymax - ymin, xmax - xmin
    return ymin + height / 2, xmin + width / 2, height, width


def encode(boxes, anchors):
    """boxes, anchors: [..., 4] (ymin, xmin, ymax, xmax) → [..., 4] (ty, tx, th, tw)."""
    y, x, h, w = _centers(boxes)
    ya, xa, ha, wa = _centers(anchors)
    ha, wa = ha + EPSILON, wa + EPSILON
    h, w = h + EPSILON, w + EPSILON
    return tf.stack([(y - ya) / ha, (x - xa) / wa, tf.math.log(h / ha), tf.math.log(w / wa)], axis=-1)


def decode(codes, anchors):
    """Inverse of `encode`."""
    ty, tx, th, tw = tf.unstack(codes, axis=-1)
    ya, xa, ha, wa = _centers(anchors)
    h, w = tf.exp(th) * ha, tf.exp(tw) * wa
    y, x = ty * ha + ya, tx * wa + xa
    return tf.stack([y - h / 2, x - w / 2, y + h / 2, x + w / 2], axis=-1)
