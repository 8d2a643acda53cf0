"""EfficientDet's losses: focal loss for classes, Huber (or an IoU loss) for boxes, L2 weight decay."""
from typing import Dict, Optional

import tensorflow as tf

from effdet.config.schema import LossConfig, default_of
from effdet.data.targets import IGNORE, flatten_levels
from effdet.hardware.workers import Workers
from effdet.model import box_coder

# trainer.loss's defaults (LossConfig in the schema)
ALPHA, GAMMA, LABEL_SMOOTHING = (default_of(LossConfig, key) for key in ("alpha", "gamma", "label_smoothing"))


def focal_loss(logits, targets, alpha: float = ALPHA, gamma: float = GAMMA, label_smoothing: float = LABEL_SMOOTHING):
    """Per-element sigmoid focal loss (Lin et al., 2017). logits and one-hot targets: [..., num_classes]."""
    weight, cross_entropy, _ = _focal_parts(logits, tf.cast(targets, logits.dtype), alpha, gamma, label_smoothing)
    return weight * cross_entropy


class FocalLossSum:
    """Σ focal loss over the anchors whose label is not IGNORE: logits [B, N, C], labels [B, N] (a class, or
    negative for background and ignored anchors). The gradient is written out in closed form.

    Autodiff of the textbook formula keeps about ten logits-sized intermediates for the backward pass (for
    D0 at 512×512, batch 8, each is 141 MB) and makes some forty passes over them; its pow() gradient alone
    was the costliest elementwise op of a step. Here the forward and the backward pass each read the logits
    once, and with `jit_compile` XLA fuses each into a single loop. (The compiled functions are called, never
    differentiated: TensorFlow's gradient of a compiled call is mis-wired when oneDNN is on.)
    """

    def __init__(self, num_classes: int, alpha: float = ALPHA, gamma: float = GAMMA,
                 label_smoothing: float = LABEL_SMOOTHING, jit_compile: bool = default_of(LossConfig, "jit_compile")):
        self.num_classes = num_classes
        self.alpha, self.gamma, self.label_smoothing = alpha, gamma, label_smoothing
        compile_ = (lambda f: tf.function(f, jit_compile=True, autograph=False)) if jit_compile else (lambda f: f)
        self._forward, self._backward = compile_(self._forward_of), compile_(self._backward_of)

    def __call__(self, logits, labels):
        @tf.custom_gradient
        def loss_sum(x):
            return self._forward(x, labels), lambda upstream: upstream * self._backward(x, labels)

        return loss_sum(logits)

    def _parts(self, logits, labels):
        targets = tf.one_hot(labels, self.num_classes, dtype=logits.dtype)  # background, ignore → all zeros
        kept = tf.cast(labels != IGNORE, logits.dtype)[..., None]
        return targets, kept

    def _forward_of(self, logits, labels):
        targets, kept = self._parts(logits, labels)
        weight, cross_entropy, _ = _focal_parts(logits, targets, self.alpha, self.gamma, self.label_smoothing)
        return tf.reduce_sum(weight * cross_entropy * kept)

    def _backward_of(self, logits, labels):
        targets, kept = self._parts(logits, labels)
        weight, cross_entropy, (probability, q, smoothed) = _focal_parts(
            logits, targets, self.alpha, self.gamma, self.label_smoothing)
        # With q = 1 - p_t: dq/dx = (1 - 2t)·p(1 - p) = (1 - 2t)·q(1 - q), so
        # d(α_t q^γ CE)/dx = α_t q^γ [γ (1 - 2t)(1 - q) CE + p - y], finite for every γ ≥ 0 and every x.
        focusing = self.gamma * (1.0 - 2.0 * targets) * (1.0 - q) * cross_entropy if self.gamma else 0.0
        return weight * (focusing + probability - smoothed) * kept


def _focal_parts(logits, targets, alpha, gamma, label_smoothing):
    """(α_t·q^γ, cross-entropy, (p, q, smoothed targets)) with p = σ(x) and q = 1 - p_t."""
    smoothed = targets * (1.0 - label_smoothing) + 0.5 * label_smoothing if label_smoothing else targets
    probability = tf.sigmoid(logits)
    q = probability + targets * (1.0 - 2.0 * probability)  # 1 - p for positives, p for negatives
    alpha_t = (1.0 - alpha) + targets * (2.0 * alpha - 1.0)
    weight = alpha_t * _power(q, gamma)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=smoothed, logits=logits)
    return weight, cross_entropy, (probability, q, smoothed)


def _power(q, gamma: float):
    """q^γ; the paper's γ (1.5, 2) without the exp/log of a general pow. Never differentiated, so the
    infinite slope of sqrt at 0 does no harm."""
    if gamma == 0:
        return tf.ones_like(q)
    if gamma == 1:
        return q
    if gamma == 1.5:
        return q * tf.sqrt(q)
    if gamma == 2:
        return q * q
    return tf.pow(q, gamma)


def huber_box_loss(box_outputs, box_targets, positive_mask, delta: float = default_of(LossConfig, "delta")):
    """Summed Huber loss over the coordinates of positive anchors. [B, N, 4], mask [B, N]."""
    error = tf.abs(box_outputs - box_targets)
    quadratic = tf.minimum(error, delta)
    loss = 0.5 * quadratic * quadratic + delta * (error - quadratic)  # quadratic up to delta, then linear
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

    The class and box losses are divided by the number of positive anchors of the global batch (summed over
    `workers`), plus one, so that every worker's gradient has the same scale.
    """

    def __init__(self, num_classes: int, min_level: int, max_level: int, anchors=None, alpha: float = ALPHA,
                 gamma: float = GAMMA, label_smoothing: float = LABEL_SMOOTHING,
                 delta: float = default_of(LossConfig, "delta"),
                 box_loss_weight: float = default_of(LossConfig, "box_loss_weight"),
                 iou_loss_type: Optional[str] = default_of(LossConfig, "iou_loss_type"),
                 iou_loss_weight: float = default_of(LossConfig, "iou_loss_weight"), workers: Optional[Workers] = None,
                 jit_compile: bool = default_of(LossConfig, "jit_compile")):
        self.num_classes = num_classes
        self.min_level, self.max_level = min_level, max_level
        self.anchors = anchors
        self.alpha, self.gamma, self.label_smoothing, self.delta = alpha, gamma, label_smoothing, delta
        self.box_loss_weight = box_loss_weight
        self.iou_loss_type = iou_loss_type
        self.iou_loss_weight = iou_loss_weight
        self.workers = workers or Workers()
        self.keys = ["class_loss", "box_loss"] + (["iou_loss"] if iou_loss_type else []) + ["det_loss"]
        self.focal_loss_sum = FocalLossSum(num_classes, alpha, gamma, label_smoothing, jit_compile=jit_compile)

    def __call__(self, outputs, targets) -> Dict[str, tf.Tensor]:
        normalizer = self.workers.sum(tf.reduce_sum(tf.cast(targets["num_positives"], tf.float32))) + 1.0
        # Each worker's sum is divided by the global count; gradients are then averaged over workers, so
        # the worker count is multiplied back in.
        scale = self.workers.size_tensor() / normalizer
        sums = self._sums(outputs[0], outputs[1], targets)
        losses = {key: value * scale for key, value in sums.items()}
        total = losses["class_loss"] + self.box_loss_weight * losses["box_loss"]
        if self.iou_loss_type:
            total += self.iou_loss_weight * losses["iou_loss"]
        losses["det_loss"] = total
        return {key: losses[key] for key in self.keys}

    def _sums(self, class_outputs, box_outputs, targets) -> Dict[str, tf.Tensor]:
        """The un-normalized sums over this worker's batch."""
        batch = tf.shape(class_outputs[0])[0]
        class_loss = tf.constant(0.0)
        # Level by level: concatenating the levels' logits first would copy them all (141 MB for D0).
        for level, level_logits in zip(range(self.min_level, self.max_level + 1), class_outputs):
            logits = tf.reshape(tf.cast(level_logits, tf.float32), [batch, -1, self.num_classes])
            labels = tf.reshape(targets[f"cls_targets_{level}"], [batch, -1])
            class_loss += self.focal_loss_sum(logits, labels)
        boxes = tf.concat([tf.reshape(tf.cast(b, tf.float32), [batch, -1, 4]) for b in box_outputs], axis=1)
        cls_targets = flatten_levels(targets, "cls_targets", self.min_level, self.max_level, 1)[..., 0]
        box_targets = flatten_levels(targets, "box_targets", self.min_level, self.max_level, 4)
        positives = cls_targets >= 0
        sums = {"class_loss": class_loss,
                "box_loss": huber_box_loss(boxes, box_targets, positives, self.delta) / 4.0}  # per coordinate
        if self.iou_loss_type:
            anchors = tf.cast(self.anchors, tf.float32)[None]
            sums["iou_loss"] = iou_box_loss(boxes, box_targets, anchors, positives, self.iou_loss_type)
        return sums
