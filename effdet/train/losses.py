"""EfficientDet's losses: focal loss for classes, Huber (or an IoU loss) for boxes, L2 weight decay."""
from typing import Callable, Dict, Optional

import tensorflow as tf

from effdet.data.targets import IGNORE, flatten_levels
from effdet.model import box_coder


def focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 1.5, label_smoothing: float = 0.0):
    """Per-element sigmoid focal loss (Lin et al., 2017). logits and one-hot targets: [..., num_classes]."""
    positive = tf.cast(targets, logits.dtype)
    smoothed = positive * (1.0 - label_smoothing) + 0.5 * label_smoothing
    probability = tf.sigmoid(logits)
    p_t = positive * probability + (1 - positive) * (1 - probability)
    alpha_t = positive * alpha + (1 - positive) * (1 - alpha)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    return alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy


def huber_box_loss(box_outputs, box_targets, positive_mask, delta: float = 0.1):
    """Summed Huber loss over the coordinates of positive anchors. [B, N, 4], mask [B, N]."""
    loss = tf.keras.losses.Huber(delta=delta, reduction=tf.keras.losses.Reduction.NONE)(
        box_targets[..., None], box_outputs[..., None])  # [B, N, 4]
    return tf.reduce_sum(loss * tf.cast(positive_mask, loss.dtype)[..., None])


def iou_box_loss(box_outputs, box_targets, anchors, positive_mask, kind: str = "giou"):
    """Summed (1 - IoU variant) over positive anchors, on boxes decoded from the regressions."""
    predicted = box_coder.decode(box_outputs, anchors)
    target = box_coder.decode(box_targets, anchors)
    loss = 1.0 - _iou(predicted, target, kind)
    return tf.reduce_sum(tf.where(positive_mask, loss, tf.zeros_like(loss)))


def _iou(a, b, kind):
    a_area = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    b_area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    inter_h = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    intersection = inter_h * inter_w
    union = a_area + b_area - intersection
    iou = intersection / tf.maximum(union, 1e-8)
    if kind == "iou":
        return iou
    enclose_h = tf.maximum(a[..., 2], b[..., 2]) - tf.minimum(a[..., 0], b[..., 0])
    enclose_w = tf.maximum(a[..., 3], b[..., 3]) - tf.minimum(a[..., 1], b[..., 1])
    enclose = tf.maximum(enclose_h * enclose_w, 1e-8)
    return iou - (enclose - union) / enclose


def weight_decay(variables, rate: float):
    """L2 on convolution and dense kernels only (not biases, batch-norm parameters or fusion weights)."""
    kernels = [v for v in variables if "kernel" in v.name.split("/")[-1]]
    if not kernels or rate == 0:
        return tf.constant(0.0)
    return rate * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])


class DetectionLoss:
    """Total loss of a batch from the network's per-level outputs and the pipeline's targets.

    The class and box losses are divided by the number of positive anchors of the global batch (over
    all workers: `sum_over_workers`), plus one, so that every worker's gradient has the same scale.
    """

    def __init__(self, num_classes: int, min_level: int, max_level: int, anchors=None, alpha: float = 0.25,
                 gamma: float = 1.5, label_smoothing: float = 0.0, delta: float = 0.1,
                 box_loss_weight: float = 50.0, iou_loss_type: Optional[str] = None, iou_loss_weight: float = 1.0,
                 sum_over_workers: Callable = None):
        self.num_classes = num_classes
        self.min_level, self.max_level = min_level, max_level
        self.anchors = anchors
        self.alpha, self.gamma, self.label_smoothing, self.delta = alpha, gamma, label_smoothing, delta
        self.box_loss_weight = box_loss_weight
        self.iou_loss_type = iou_loss_type
        self.iou_loss_weight = iou_loss_weight
        self.sum_over_workers = sum_over_workers or (lambda x: x)
        self.keys = ["class_loss", "box_loss"] + (["iou_loss"] if iou_loss_type else []) + ["det_loss"]

    def __call__(self, outputs, targets) -> Dict[str, tf.Tensor]:
        class_outputs, box_outputs = outputs
        batch = tf.shape(class_outputs[0])[0]
        logits = tf.concat([tf.reshape(tf.cast(c, tf.float32), [batch, -1, self.num_classes])
                            for c in class_outputs], axis=1)
        boxes = tf.concat([tf.reshape(tf.cast(b, tf.float32), [batch, -1, 4]) for b in box_outputs], axis=1)
        cls_targets = flatten_levels(targets, "cls_targets", self.min_level, self.max_level, 1)[..., 0]
        box_targets = flatten_levels(targets, "box_targets", self.min_level, self.max_level, 4)
        positives = cls_targets >= 0
        normalizer = self.sum_over_workers(tf.reduce_sum(tf.cast(targets["num_positives"], tf.float32))) + 1.0
        workers = self.sum_over_workers(tf.constant(1.0))
        # Each worker's sum is divided by the global count; gradients are then averaged over workers, so
        # the worker count is multiplied back in.
        scale = workers / normalizer

        one_hot = tf.one_hot(cls_targets, self.num_classes)  # background (-1) and ignore (-2) → all zeros
        per_anchor = tf.reduce_sum(focal_loss(logits, one_hot, self.alpha, self.gamma, self.label_smoothing), -1)
        class_loss = tf.reduce_sum(tf.where(cls_targets == IGNORE, 0.0, per_anchor)) * scale
        box_loss = huber_box_loss(boxes, box_targets, positives, self.delta) * scale / 4.0  # per coordinate
        total = class_loss + self.box_loss_weight * box_loss
        losses = {"class_loss": class_loss, "box_loss": box_loss}
        if self.iou_loss_type:
            anchors = tf.cast(self.anchors, tf.float32)[None]
            iou_loss = iou_box_loss(boxes, box_targets, anchors, positives, self.iou_loss_type) * scale
            total += self.iou_loss_weight * iou_loss
            losses["iou_loss"] = iou_loss
        losses["det_loss"] = total
        return losses
