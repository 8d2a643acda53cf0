"""Runs a model over the val split and scores it with COCO metrics; records the result in the run dir."""
import json
import logging
import os
from typing import Any, Dict

import tensorflow as tf

from effdet.data.builder import build_input
from effdet.data.sources import DataSource
from effdet.data.targets import AnchorLabeler
from effdet.eval.coco_metrics import CocoEvaluator
from effdet.eval.postprocess import postprocess
from effdet.train.distributed import Workers

log = logging.getLogger(__name__)
RECORDED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def detector(model: tf.keras.Model, labeler: AnchorLabeler, num_classes: int, eval_cfg: Any):
    """images → detections in original pixels (a compiled function)."""
    anchors = labeler.anchors

    @tf.function(autograph=False)
    def detect(images, image_scales, original_sizes):
        class_outputs, box_outputs = model(images, training=False)
        return postprocess(class_outputs, box_outputs, anchors, image_scales, num_classes,
                           max_detections=eval_cfg.max_detections, score_threshold=eval_cfg.score_threshold,
                           nms=eval_cfg.nms, iou_threshold=eval_cfg.iou_threshold,
                           soft_nms_sigma=eval_cfg.soft_nms_sigma, original_sizes=original_sizes)

    return detect


def evaluate(model, source: DataSource, labeler: AnchorLabeler, data_cfg: Any, eval_cfg: Any) -> Dict[str, Any]:
    if not source.val_json_file:
        raise ValueError(f"data '{source.name}' has no val_json_file (COCO-format ground truth) to score against")
    evaluator = CocoEvaluator(source.val_json_file)
    detect = detector(model, labeler, source.num_classes, eval_cfg)
    pipeline = build_input(data_cfg, source, labeler, "val")
    for images, batch in pipeline.eval(eval_cfg.batch_size, max_examples=eval_cfg.samples):
        detections = detect(images, batch["image_scale"], batch["original_size"])
        evaluator.add({k: v.numpy() for k, v in detections.items()}, batch["source_id"].numpy())
    metrics = evaluator.evaluate()
    return {"metrics": metrics, "per_class_ap": evaluator.per_class_ap(), "summary_text": evaluator.summary_text,
            "num_images": len(evaluator.seen_images)}


def evaluate_and_record(cfg: Any, model, source: DataSource, labeler: AnchorLabeler, workers: Workers,
                        run_dir: str, step: int) -> Dict[str, Any]:
    """Evaluates on rank 0 (the other workers wait) and appends the metrics to metrics.jsonl."""
    result = {}
    if workers.is_chief:
        result = evaluate(model, source, labeler, cfg.data, cfg.eval)
        metrics = result["metrics"]
        record = {"step": step, **{k: round(float(metrics[k]), 6) for k in RECORDED}}
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as handle:
            handle.write(json.dumps(record) + "\n")
        with tf.summary.create_file_writer(os.path.join(run_dir, "tensorboard")).as_default(step=step):
            for key, value in record.items():
                if key != "step":
                    tf.summary.scalar(f"eval/{key}", value)
        log.info("COCO evaluation at step %d on %d images:\n%s", step, result["num_images"], result["summary_text"])
        print(format_metrics(record))
    workers.barrier()
    return result


def format_metrics(record: Dict[str, float]) -> str:
    return "  ".join(f"{key} {record[key]:.3f}" for key in RECORDED) + f"  (step {record['step']})"
