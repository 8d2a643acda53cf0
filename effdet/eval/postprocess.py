"""Detections from the network's raw outputs: scores, box decoding and per-class non-maximum suppression.

Everything runs inside the TF graph on a whole batch (it traces under `tf.function`):

1. the per-level maps are flattened into anchor order (level, position row-major, anchor);
2. the `pre_nms_top_k` best (anchor, class) pairs of each image are kept — on the logits, since the
   sigmoid is monotonic, so that only those few thousand scores and boxes are ever computed (see
   `top_k_pairs` for the two-stage top-k that makes this fast on CPU);
3. their boxes are decoded against their anchors and clipped to the model input;
4. NMS runs once per image over all classes at once: every class's boxes are shifted by a class-specific
   offset larger than the image, so that boxes of different classes never overlap. Greedy NMS — hard or
   Gaussian soft-NMS — is then exactly per-class NMS followed by keeping the `max_detections` best;
5. boxes are mapped back to the pixels of the original image (divided by its `image_scale`).

Soft-NMS sigma follows the Soft-NMS paper (Bodla et al. 2017): a box overlapping a kept box of its class
by IoU `u` has its score multiplied by exp(-u² / sigma). TensorFlow's `soft_nms_sigma` multiplies by
exp(-u² / (2·sigma)) instead, so it is given `sigma / 2`. (automl passes its sigma 0.5 to TensorFlow as is,
i.e. exp(-u²): `soft_nms_sigma=1.0` here reproduces it.)
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from effdet.config.schema import EvalConfig, default_of
from effdet.model import box_coder

NMS_METHODS = ("hard", "soft")

Outputs = Union[tf.Tensor, Sequence[tf.Tensor]]


def flatten_outputs(outputs: Outputs, last_dim: int) -> tf.Tensor:
    """Per-level [B, H, W, A*k] maps (levels min..max) → [B, N, k] in anchor order.

    An already flattened [B, N, k] tensor passes through unchanged.
    """
    if isinstance(outputs, (list, tuple)):
        parts = [_flatten(level, last_dim) for level in outputs]
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
    return _flatten(outputs, last_dim)


def _flatten(tensor: tf.Tensor, last_dim: int) -> tf.Tensor:
    """[B, ...] → [B, n, last_dim]. With a static shape the target shape is a constant (the batch as -1), so
    that the graph computes no shapes: TFLite's XNNPACK needs every shape known once the batch is set."""
    per_image = tensor.shape[1:].num_elements()
    if per_image is not None:
        return tf.reshape(tensor, [-1, per_image // last_dim, last_dim])
    return tf.reshape(tensor, [tf.shape(tensor)[0], -1, last_dim])


def input_extent(anchors: tf.Tensor) -> tf.Tensor:
    """The model input's (height, width), from the anchors: at every level the anchor centres are symmetric
    about the image centre (first at stride/2, last at size - stride/2), so min + max centre = size."""
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2.0
    return tf.reduce_min(centers, axis=0) + tf.reduce_max(centers, axis=0)


def _limit(k: int, dim: tf.Tensor, static_dim: Optional[int]):
    return min(k, static_dim) if static_dim is not None else tf.minimum(k, dim)


def top_k_pairs(logits: tf.Tensor, k: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The k largest entries of each image's [N, C] logits (unsorted): values [B, k], anchor and class indices.

    A single top-k over all N·C entries is slow on CPU (~75 ms for D0's 49104 × 90), so it runs in two
    stages with the same result: an entry among the k largest has fewer than k entries above it, and every
    anchor whose best class beats it supplies one of those, so its anchor is among the k anchors with the
    largest best-class logit. Stage 1 picks those anchors, stage 2 the k largest of their k·C entries.
    """
    batch, num_classes = tf.shape(logits)[0], logits.shape[2]
    k_anchors = _limit(k, tf.shape(logits)[1], logits.shape[1])
    _, best_anchors = tf.math.top_k(tf.reduce_max(logits, axis=2), k=k_anchors, sorted=False)  # [B, Ka]
    candidates = tf.reshape(tf.gather(logits, best_anchors, batch_dims=1), [batch, -1])  # [B, Ka*C]
    k_pairs = _limit(k, tf.shape(candidates)[1], candidates.shape[1])
    top_logits, pair_indices = tf.math.top_k(candidates, k=k_pairs, sorted=False)
    anchor_indices = tf.gather(best_anchors, pair_indices // num_classes, batch_dims=1)
    return top_logits, anchor_indices, pair_indices % num_classes


def postprocess(class_outputs: Outputs, box_outputs: Outputs, anchors, image_scales, num_classes: int, *,
                max_detections: int = default_of(EvalConfig, "max_detections"), pre_nms_top_k: int = 5000,
                score_threshold: float = default_of(EvalConfig, "score_threshold"),
                nms: str = default_of(EvalConfig, "nms"),
                iou_threshold: float = default_of(EvalConfig, "iou_threshold"),
                soft_nms_sigma: float = default_of(EvalConfig, "soft_nms_sigma"),
                image_size: Optional[Tuple[int, int]] = None, original_sizes=None) -> Dict[str, tf.Tensor]:
    """The network's outputs → the best `max_detections` detections per image.

    class_outputs: per-level [B, H, W, A*num_classes] logits (or [B, N, num_classes]).
    box_outputs: per-level [B, H, W, A*4] (ty, tx, th, tw) regressions (or [B, N, 4]).
    anchors: [N, 4] (ymin, xmin, ymax, xmax) in model-input pixels, in the outputs' anchor order.
    image_scales: [B] (or [B, 1]) model-input pixels per original pixel.
    score_threshold: detections scoring at most this (after soft-NMS decay, if any) are dropped.
    nms: "hard" (suppress IoU > `iou_threshold`) or "soft" (Gaussian decay; `soft_nms_sigma` 0 → hard).
    image_size: the model input (height, width) that boxes are clipped to; by default read off the anchors.
    original_sizes: optional [B, 2] (height, width) of the original images; boxes are then also clipped to it.

    Returns `boxes` [B, max_detections, 4] (ymin, xmin, ymax, xmax) in original-image pixels, `scores`
    [B, max_detections] float32, `classes` [B, max_detections] int32 dataset ids (class index + 1), best
    first, zero-padded after the first `num_detections` [B] int32.
    """
    if nms not in NMS_METHODS:
        raise ValueError(f"nms must be one of {NMS_METHODS}, got {nms!r}")
    if soft_nms_sigma < 0:
        raise ValueError(f"soft_nms_sigma must be >= 0, got {soft_nms_sigma}")
    if max_detections < 1 or pre_nms_top_k < 1:
        raise ValueError("max_detections and pre_nms_top_k must be positive")
    tf_sigma = soft_nms_sigma / 2.0 if nms == "soft" else 0.0

    with tf.name_scope("postprocess"):
        logits = flatten_outputs(class_outputs, num_classes)  # [B, N, C]
        codes = flatten_outputs(box_outputs, 4)  # [B, N, 4]
        anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)

        # 2. Top-k (anchor, class) pairs on the logits, in two exact stages.
        top_logits, anchor_indices, class_indices = top_k_pairs(logits, pre_nms_top_k)
        scores = tf.sigmoid(tf.cast(top_logits, tf.float32))

        # 3. Decode only those boxes; clip to the model input.
        top_codes = tf.cast(tf.gather(codes, anchor_indices, batch_dims=1), tf.float32)
        boxes = box_coder.decode(top_codes, tf.gather(anchors, anchor_indices))
        if image_size is None:
            extent = input_extent(anchors)
        else:
            extent = tf.cast(tf.convert_to_tensor(image_size), tf.float32)
        boxes = tf.clip_by_value(boxes, 0.0, tf.tile(extent, [2]))

        # 4. Per-class NMS, one call per image.
        class_offset = tf.reduce_max(extent) + 1.0

        def one_image(args):
            image_boxes, image_scores, image_classes = args
            shifted = image_boxes + tf.cast(image_classes, tf.float32)[:, None] * class_offset
            selected, selected_scores = tf.image.non_max_suppression_with_scores(
                shifted, image_scores, max_output_size=max_detections, iou_threshold=iou_threshold,
                score_threshold=score_threshold, soft_nms_sigma=tf_sigma)
            count = tf.shape(selected)[0]
            padding = max_detections - count
            kept_boxes = tf.pad(tf.gather(image_boxes, selected), [[0, padding], [0, 0]])
            kept_scores = tf.pad(selected_scores, [[0, padding]])
            kept_classes = tf.pad(tf.gather(image_classes, selected) + 1, [[0, padding]])
            kept_boxes.set_shape([max_detections, 4])
            kept_scores.set_shape([max_detections])
            kept_classes.set_shape([max_detections])
            return kept_boxes, kept_scores, kept_classes, count

        boxes, scores, classes, num_detections = tf.map_fn(
            one_image, (boxes, scores, class_indices),
            fn_output_signature=(tf.TensorSpec([max_detections, 4], tf.float32),
                                 tf.TensorSpec([max_detections], tf.float32),
                                 tf.TensorSpec([max_detections], tf.int32),
                                 tf.TensorSpec([], tf.int32)))

        # 5. Back to original-image pixels.
        image_scales = tf.reshape(tf.cast(image_scales, tf.float32), [-1, 1, 1])
        boxes = boxes / image_scales
        if original_sizes is not None:
            limits = tf.tile(tf.cast(tf.reshape(original_sizes, [-1, 1, 2]), tf.float32), [1, 1, 2])
            boxes = tf.minimum(boxes, limits)
        return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": num_detections}
