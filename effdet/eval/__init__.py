"""Evaluation: post-processing (effdet.eval.postprocess), COCO metrics (effdet.eval.coco_metrics)."""
