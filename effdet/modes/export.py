"""mode=export: a TF SavedModel that takes uint8 images and returns detections, pre- and post-processing
inside; optionally a float32 TFLite model of the network, for XNNPACK."""
import json
import logging
import os
from typing import Any, Dict, Tuple

import numpy as np
import tensorflow as tf

from effdet.artifacts import LABELS, SAVED_MODEL, TFLITE, TFLITE_ANCHORS_SUFFIX
from effdet.data.builder import build_labeler
from effdet.data.pipeline import prepare_images
from effdet.data.sources import build_source
from effdet.errors import ConfigError
from effdet.eval.engines import tflite_model
from effdet.eval.postprocess import postprocess
from effdet.model.builder import image_size_of
from effdet.model.detector import build_detector
from effdet.modes.registry import MODES

log = logging.getLogger(__name__)


class Detector(tf.Module):
    """images [B, H, W, 3] uint8 (one size per batch, any size) → boxes [B, D, 4] (ymin, xmin, ymax, xmax in the
    images' pixels), scores [B, D], classes [B, D] (dataset ids) and num_detections [B]."""

    def __init__(self, model: tf.keras.Model, anchors, num_classes: int, image_size: Tuple[int, int], eval_cfg: Any):
        super().__init__(name="effdet_detector")
        self.model = model
        self.anchors = tf.constant(anchors)
        self.num_classes = num_classes
        self.image_size = tuple(image_size)
        self.settings = dict(max_detections=eval_cfg.max_detections, score_threshold=eval_cfg.score_threshold,
                             nms=eval_cfg.nms, iou_threshold=eval_cfg.iou_threshold,
                             soft_nms_sigma=eval_cfg.soft_nms_sigma)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def prepare(self, images):
        """images → (pixels at the model's input size, image scales [B], original sizes [B, 2]): the same
        arithmetic as evaluation's input pipeline (fit, bilinear resize, round, pad bottom-right). Always
        padded to the square input: the graph's network and anchors are traced for that one size."""
        pixels, image_scales, original_sizes = prepare_images(images, self.image_size)
        return tf.ensure_shape(pixels, [None, *self.image_size, 3]), image_scales, original_sizes

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        pixels, image_scales, original_sizes = self.prepare(images)
        class_outputs, box_outputs = self.model(pixels, training=False)
        return postprocess(class_outputs, box_outputs, self.anchors, image_scales, self.num_classes,
                           original_sizes=original_sizes, **self.settings)


@MODES.register("export")
def export(cfg: Any, run_dir: str) -> Dict[str, Any]:
    export_cfg = cfg.export
    if not export_cfg.ckpt:
        raise ConfigError("mode=export needs export.ckpt: a checkpoint, a directory of checkpoints or a run dir")
    model, prefix, step = build_detector(cfg, export_cfg.ckpt, export_cfg.use_ema, key="export.ckpt")
    if cfg.eval.padding != "square":
        log.warning("eval.padding=%s is for mode=eval and mode=infer: the SavedModel and the TFLite model take "
                    "the square input (%s), whose network and anchors are fixed in them", cfg.eval.padding,
                    "x".join(map(str, image_size_of(cfg.model))))
    source = build_source(cfg.data)
    labeler = build_labeler(cfg.model)
    detector = Detector(model, labeler.anchors, source.num_classes, image_size_of(cfg.model), cfg.eval)
    output_dir = export_cfg.output_dir or os.path.join(run_dir, SAVED_MODEL)
    tf.saved_model.save(detector, output_dir, signatures={"serving_default": detector.serve})
    with open(os.path.join(output_dir, LABELS), "w") as handle:  # class id → name, for the model's users
        json.dump({str(i): source.class_name(i) for i in range(1, source.num_classes + 1)}, handle, indent=1)
    log.info("SavedModel of %s (step %d, %s weights) in %s", prefix, step, "EMA" if export_cfg.use_ema else "raw",
             output_dir)
    print(f"SavedModel: {output_dir} (signature serving_default: images uint8 [B, H, W, 3] → boxes, scores, "
          "classes, num_detections)")
    result = {"saved_model": output_dir, "step": step}
    if export_cfg.tflite:
        tflite_path = os.path.join(os.path.dirname(output_dir.rstrip("/")), TFLITE)
        result["tflite"] = export_tflite(model, source.num_classes, image_size_of(cfg.model), labeler.anchors,
                                         tflite_path)
        print(f"TFLite (float32 network, XNNPACK-ready): {result['tflite']} (anchors: "
              f"{os.path.splitext(tflite_path)[0]}{TFLITE_ANCHORS_SUFFIX})")
    return result


def export_tflite(model: tf.keras.Model, num_classes: int, image_size: Tuple[int, int], anchors, path: str) -> str:
    """The network as a float32 TFLite model with static shapes and builtin ops only, so that TFLite's XNNPACK
    delegate runs all of it (see `effdet.eval.engines.tflite_model` for its inputs and outputs), and its anchors
    [N, 4] (ymin, xmin, ymax, xmax in input pixels) beside it, in the outputs' order, to decode the box codes.
    Resizing, decoding and NMS stay outside: with them inside, the graph has dynamic shapes and XNNPACK declines
    it, leaving the whole model to TFLite's slower reference kernels."""
    with open(path, "wb") as handle:
        handle.write(tflite_model(model, num_classes, image_size))
    np.save(os.path.splitext(path)[0] + TFLITE_ANCHORS_SUFFIX, np.asarray(anchors, np.float32))
    return path
