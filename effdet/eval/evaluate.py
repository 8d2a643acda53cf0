"""Runs a model over the val split and scores it with COCO metrics; records the result in the run dir."""
import csv
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from effdet.artifacts import AP_OVER_STEPS, METRICS, PER_CLASS_AP, STEP_DETECTIONS, STEP_METRICS, TENSORBOARD, \
    VAL_DETECTIONS, eval_step_dir
from effdet.data.builder import build_input
from effdet.data.pipeline import Shard
from effdet.data.reader import CorruptDataError, CorruptRecords, describe_counts, distinct_corrupt, merge_counts, \
    stop_reason
from effdet.data.sources import DataSource
from effdet.data.targets import AnchorLabeler
from effdet.errors import ConfigError
from effdet.eval.coco_metrics import CocoEvaluator, detections_to_coco_rows, image_id_of
from effdet.eval.convert import Calibration, calibration_of
from effdet.eval.engines import ENGINES
from effdet.eval.pictures import ValPictures
from effdet.eval.postprocess import postprocess
from effdet.hardware.workers import Workers

log = logging.getLogger(__name__)
RECORDED = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def detector(model: tf.keras.Model, labeler: AnchorLabeler, num_classes: int, eval_cfg: Any,
             calibration: Optional[Calibration] = None):
    """(images at the model's input size, image scales, original sizes) → detections in original pixels, the
    network run by `eval.engine` (`calibration`: what an int8 conversion there is calibrated on)."""
    settings = dict(max_detections=eval_cfg.max_detections, score_threshold=eval_cfg.score_threshold,
                    nms=eval_cfg.nms, iou_threshold=eval_cfg.iou_threshold, soft_nms_sigma=eval_cfg.soft_nms_sigma)
    make_network = ENGINES.get(eval_cfg.engine, where="eval.engine")
    # By input size, built at its first batch: the model's input size, or several with eval.padding=stride.
    networks, anchors = {}, {}

    @tf.function(autograph=False)
    def finish(logits, codes, size_anchors, image_scales, original_sizes):
        return postprocess(logits, codes, size_anchors, image_scales, num_classes, original_sizes=original_sizes,
                           **settings)

    def detect(images, image_scales, original_sizes):
        size = tuple(images.shape[1:3])
        if size not in networks:
            networks[size] = make_network(model, num_classes, size, eval_cfg, calibration)
            anchors[size] = labeler.anchors_at(size)
        logits, codes = networks[size](images)
        if logits.shape[1] != anchors[size].shape[0] or logits.shape[2] != num_classes:
            raise ConfigError(f"eval.engine={eval_cfg.engine}: the network gives {logits.shape[1]} anchors x "
                              f"{logits.shape[2]} classes, this job's config {anchors[size].shape[0]} x {num_classes}: "
                              "its file was exported with another model or data config")
        return finish(logits, codes, anchors[size], image_scales, original_sizes)

    return detect


def detect_split(model, source: DataSource, labeler: AnchorLabeler, data_cfg: Any, eval_cfg: Any,
                 workers: Workers = Workers(), calibration: Optional[Calibration] = None
                 ) -> Tuple[List[dict], List[int], dict]:
    """Detections on the val split (its first eval.samples images) as COCO results rows, the ids of the
    images run, and the bad val records skipped (merged over workers): one pass of a `SplitDetector`."""
    return SplitDetector(model, source, labeler, data_cfg, eval_cfg, workers, calibration)()


class SplitDetector:
    """Detects on the val split, pass after pass (each call one pass: see `__call__`), for a job that evaluates
    one model again and again as its weights change (train_and_eval, continuous evaluation). The input pipeline,
    its dataset and the detector's traced functions are built once: built anew for every evaluation, each would
    be traced again, and TensorFlow keeps some of what it traced for as long as the process lives (every
    `from_generator` a shard reader makes, with what its generator holds). The tensorflow engine's network reads
    the model's variables when it runs; the other engines convert the weights, so they get a new network for
    every pass."""

    def __init__(self, model, source: DataSource, labeler: AnchorLabeler, data_cfg: Any, eval_cfg: Any,
                 workers: Workers = Workers(), calibration: Optional[Calibration] = None):
        self.model, self.source, self.labeler, self.data_cfg, self.eval_cfg = model, source, labeler, data_cfg, eval_cfg
        self.workers, self.calibration = workers, calibration
        self.pipeline = build_input(data_cfg, source, labeler, "val")
        self._shard, self.batches = None, None
        self._detect = None

    def _batches(self):
        """This worker's part of the val split; made again only when the workers changed (an elastic job)."""
        shard = Shard(self.workers.rank, self.workers.size)
        if shard != self._shard:
            self._shard, self.batches = shard, self.pipeline.eval(self.eval_cfg.batch_size, shard,
                                                                  self.eval_cfg.samples, self.eval_cfg.padding)
        return self.batches

    def _detector(self):
        if self._detect is None or self.eval_cfg.engine != "tensorflow":
            self._detect = detector(self.model, self.labeler, self.source.num_classes, self.eval_cfg,
                                    self.calibration)
        return self._detect

    def __call__(self) -> Tuple[List[dict], List[int], dict]:
        """One pass: the rows, the image ids and the bad records of this pass. With several workers each runs
        its own shard and every worker gets everybody's, in rank order. With data.on_corrupt=stop a bad record
        stops it with CorruptDataError, on every worker; with skip the metrics are over the images detected (a
        run that trained for days keeps its final evaluation), and the warning says how many bad records were
        skipped."""
        detect, corrupt_records, workers = self._detector(), self.pipeline.corrupt, self.workers
        corrupt_records.reset()  # what this pass meets, not the passes before it too
        rows, image_ids = [], []
        for images, batch in readable_batches(self._batches(), corrupt_records):
            detections = detect(images, batch["image_scale"], batch["original_size"])
            ids = [image_id_of(source_id) for source_id in batch["source_id"].numpy()]
            rows.extend(detections_to_coco_rows({k: v.numpy() for k, v in detections.items()}, ids))
            image_ids.extend(ids)
        parts = [(rows, image_ids, corrupt_records.counts())] if workers.size == 1 else \
            workers.gather((rows, image_ids, corrupt_records.counts()))
        corrupt = merge_counts([part[2] for part in parts])
        problem = stop_reason(corrupt, "stop", 0.0) if self.data_cfg.on_corrupt == "stop" else None
        if problem:
            raise CorruptDataError(f"{problem}. Run mode=check_data to list every bad record")
        return [row for part in parts for row in part[0]], [image_id for part in parts for image_id in part[1]], \
            corrupt


def readable_batches(batches, corrupt: CorruptRecords):
    """The batches of an evaluation pass; one that the input cannot make (a record that decodes nowhere but
    in the pipeline) is counted as a bad record and the pass goes on."""
    iterator = iter(batches)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            if "IteratorGetNext" not in str(error):
                raise
            message = str(error).strip().splitlines()[0][:200]
            corrupt.bad("(a batch; shard unknown)", None, f"a record does not decode ({message})")


def evaluate(model, source: DataSource, labeler: AnchorLabeler, data_cfg: Any, eval_cfg: Any,
             detections_path: Optional[str] = None, workers: Workers = Workers(),
             calibration: Optional[Calibration] = None, split: Optional[SplitDetector] = None,
             keep_rows: bool = False) -> Dict[str, Any]:
    """COCO metrics of `model` on the val split; the detections go to `detections_path` (COCO results JSON).
    Every worker detects its shard; rank 0 scores them all (the others return {}). `split`: a `SplitDetector`
    of this model kept from an earlier evaluation (default: a new one); `keep_rows`: the result holds the
    detections as COCO result rows too ("rows")."""
    if not source.val_json_file:
        raise ValueError(f"data '{source.name}' has no val_json_file (COCO-format ground truth) to score against")
    split = split or SplitDetector(model, source, labeler, data_cfg, eval_cfg, workers, calibration)
    rows, image_ids, corrupt = split()
    if not workers.is_chief:
        return {}
    evaluator = CocoEvaluator(source.val_json_file)
    evaluator.add_rows(rows, image_ids)
    metrics = evaluator.evaluate()
    if detections_path:
        evaluator.write_results(detections_path)
    if corrupt["corrupt"]:
        in_json = len(evaluator.ground_truth.getImgIds())
        left_out = f"; {in_json - len(evaluator.seen_images)} of the {in_json} images of {source.val_json_file} " \
            "are left out" if eval_cfg.samples is None else ""
        log.warning("bad val records were skipped: the COCO metrics are over the %d images detected%s\n%s",
                    len(evaluator.seen_images), left_out, describe_counts(corrupt))
    return {"metrics": metrics, "per_class_ap": evaluator.per_class_ap(), "summary_text": evaluator.summary_text,
            "num_images": len(evaluator.seen_images), "corrupt_records": distinct_corrupt(corrupt),
            **({"rows": rows} if keep_rows else {})}


def write_testdev_detections(model, source: DataSource, labeler: AnchorLabeler, data_cfg: Any, eval_cfg: Any,
                             directory: str, workers: Workers = Workers(),
                             calibration: Optional[Calibration] = None) -> Dict[str, Any]:
    """Detections on the val split without scoring them (COCO test-dev has no public ground truth): a COCO
    results JSON to submit, named as the evaluation server expects. Written by rank 0."""
    rows, image_ids, _ = detect_split(model, source, labeler, data_cfg, eval_cfg, workers, calibration)
    path = os.path.join(directory, "detections_test-dev2017_effdet_results.json")
    if workers.is_chief:
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as handle:
            json.dump(rows, handle)
    return {"path": path, "num_images": len(set(image_ids)), "num_detections": len(rows)}


def evaluate_and_record(cfg: Any, model, source: DataSource, labeler: AnchorLabeler, workers: Workers,
                        run_dir: str, step: int) -> Dict[str, Any]:
    """One evaluation, recorded (see `RecordedEvaluations`, which a job that evaluates more than once keeps)."""
    with RecordedEvaluations(cfg, model, source, labeler, workers, run_dir) as evaluations:
        return evaluations(step)


class RecordedEvaluations:
    """Evaluates `model` (every worker its shard; rank 0 scores and records) each time it is called with a step.
    Appends the metrics to metrics.jsonl and TensorBoard, redraws ap_over_steps.png, and keeps the detections and
    per-class AP under eval/step_N/, with the picture of the first eval.num_pictures val images and their
    detections (also in TensorBoard). What the evaluations share is built once: the `SplitDetector`, the
    pictures' images and, on rank 0, one TensorBoard writer (one per evaluation would each leave an events
    file). `close()` (or the `with` block's end) closes the writer."""

    def __init__(self, cfg: Any, model, source: DataSource, labeler: AnchorLabeler, workers: Workers, run_dir: str):
        self.cfg, self.model, self.source, self.labeler, self.workers, self.run_dir = \
            cfg, model, source, labeler, workers, run_dir
        self.split = SplitDetector(model, source, labeler, cfg.data, cfg.eval, workers,
                                   calibration_of(cfg, source, labeler))
        count = cfg.eval.num_pictures if cfg.eval.samples is None else min(cfg.eval.num_pictures, cfg.eval.samples)
        self.pictures = ValPictures(self._first_examples, count, source.class_name) if count else None
        self.writer = None

    def _first_examples(self, count: int):
        """The pictures' val examples; a record that reads but does not decode ends them there, with a warning."""
        examples = iter(self.split.pipeline.first_examples(count))
        while True:
            try:
                yield {key: value.numpy() for key, value in next(examples).items()}
            except StopIteration:
                return
            except tf.errors.OpError as error:
                log.warning("val_detections.png shows fewer images: a val record does not decode (%s)",
                            str(error).strip().splitlines()[0][:200])
                return

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __call__(self, step: int) -> Dict[str, Any]:
        cfg, run_dir, workers = self.cfg, self.run_dir, self.workers
        # Every worker evaluates rank 0's model, the one its checkpoints hold: with plain batch norm each worker's
        # moving statistics followed its own batches.
        workers.broadcast(self.model.variables)
        details_dir = eval_step_dir(run_dir, step)
        if workers.is_chief:
            os.makedirs(details_dir, exist_ok=True)
        result = evaluate(self.model, self.source, self.labeler, cfg.data, cfg.eval,
                          detections_path=os.path.join(details_dir, STEP_DETECTIONS), workers=workers,
                          split=self.split, keep_rows=self.pictures is not None)
        if workers.is_chief:
            picture = self.pictures.render(result.pop("rows"), cfg.infer.draw_threshold) if self.pictures else None
            if picture is not None:
                picture.save(os.path.join(details_dir, VAL_DETECTIONS))
            metrics = result["metrics"]
            record = {"step": step, **{k: round(float(metrics[k]), 6) for k in RECORDED}}
            with open(os.path.join(details_dir, STEP_METRICS), "w") as handle:
                json.dump({"step": step, "num_images": result["num_images"],
                           "corrupt_records": result["corrupt_records"], **metrics}, handle, indent=1)
            write_per_class_ap(result["per_class_ap"], os.path.join(details_dir, PER_CLASS_AP))
            metrics_path = os.path.join(run_dir, METRICS)
            with open(metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            plot_ap_over_steps(read_metrics(metrics_path), os.path.join(run_dir, AP_OVER_STEPS))
            if self.writer is None:
                self.writer = tf.summary.create_file_writer(os.path.join(run_dir, TENSORBOARD))
            with self.writer.as_default(step=step):
                for key, value in record.items():
                    if key != "step":
                        tf.summary.scalar(f"eval/{key}", value)
                if picture is not None:
                    tf.summary.image("eval/val_detections", np.asarray(picture)[None], max_outputs=1,
                                     description="the first val images: detections in colour, ground truth dashed")
            self.writer.flush()
            log.info("COCO evaluation at step %d on %d images:\n%s", step, result["num_images"],
                     result["summary_text"])
            log.info("AP per class (IoU .50:.95):\n%s", per_class_table(result["per_class_ap"]))
            print(format_metrics(record))
        workers.barrier()
        return result


def format_metrics(record: Dict[str, float]) -> str:
    return "  ".join(f"{key} {record[key]:.3f}" for key in RECORDED) + f"  (step {record['step']})"


def per_class_table(per_class_ap: Dict[str, float]) -> str:
    """Classes by AP, best first; '-' for a class without ground truth in the evaluated images."""
    ranked = sorted(per_class_ap.items(), key=lambda item: -item[1])
    width = max([len(name) for name in per_class_ap] + [5])
    return "\n".join(f"{name:<{width}}  {ap:.3f}" if ap >= 0 else f"{name:<{width}}  -" for name, ap in ranked)


def write_per_class_ap(per_class_ap: Dict[str, float], path: str) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "AP"])
        for name, ap in per_class_ap.items():
            writer.writerow([name, "" if ap < 0 else f"{ap:.6f}"])


def read_metrics(path: str) -> List[Dict[str, float]]:
    """metrics.jsonl in step order; a step evaluated twice keeps its latest record."""
    by_step = {}
    if os.path.exists(path):
        with open(path) as handle:
            for line in handle:
                if line.strip():
                    record = json.loads(line)
                    by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def plot_ap_over_steps(records: List[Dict[str, float]], path: str) -> None:
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    steps = [record["step"] for record in records]
    for key in ("AP", "AP50", "AP75", "AR100"):
        axis.plot(steps, [record[key] for record in records], marker="o", markersize=3, linewidth=1, label=key)
    axis.set_xlabel("step")
    axis.set_ylim(0, 1)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", fontsize=8)
    axis.set_title("COCO metrics over training")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
