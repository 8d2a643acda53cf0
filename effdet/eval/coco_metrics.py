"""COCO box metrics with pycocotools: detections accumulated batch by batch, then one COCOeval.

Detections arrive as `postprocess` returns them (numpy): `boxes` [B, D, 4] (ymin, xmin, ymax, xmax) in
original-image pixels, `scores` [B, D], `classes` [B, D] dataset category ids, `num_detections` [B]; each
image is named by its `source_id`, the COCO image id as decimal text (bytes, str or int).
"""
import contextlib
import copy
import io
import json
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

# COCOeval.stats, in order.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def image_id_of(source_id) -> int:
    """A source id (b"397133", "397133", np.int64(397133) …) → the COCO image id 397133."""
    if isinstance(source_id, np.ndarray):
        source_id = source_id.item()
    if isinstance(source_id, bytes):
        source_id = source_id.decode("utf-8")
    if isinstance(source_id, str):
        source_id = source_id.strip()
    try:
        return int(source_id)
    except (TypeError, ValueError):
        raise ValueError(f"source id {source_id!r} is not a COCO image id (decimal text)") from None


def detections_to_coco_rows(detections: Dict[str, np.ndarray], source_ids: Sequence) -> List[dict]:
    """Batched detections → COCO results rows {image_id, category_id, bbox: [x, y, w, h], score}.

    `detections`: boxes [B, D, 4] (ymin, xmin, ymax, xmax), scores [B, D], classes [B, D] category ids and
    optionally num_detections [B] (only the first num_detections[b] of image b count; all when absent).
    `source_ids` [B] name the images. Pure: the inputs are not modified.
    """
    image_ids = [image_id_of(source_id) for source_id in np.asarray(source_ids, dtype=object).reshape(-1)]
    batch = len(image_ids)
    boxes = np.asarray(detections["boxes"], dtype=np.float64).reshape(batch, -1, 4)
    scores = np.asarray(detections["scores"], dtype=np.float64).reshape(batch, -1)
    classes = np.asarray(detections["classes"]).reshape(batch, -1)
    if detections.get("num_detections") is None:
        counts = np.full([batch], scores.shape[1])
    else:
        counts = np.minimum(np.asarray(detections["num_detections"]).reshape(batch), scores.shape[1])
    rows = []
    for b, image_id in enumerate(image_ids):
        for d in range(int(counts[b])):
            ymin, xmin, ymax, xmax = boxes[b, d]
            rows.append({
                "image_id": image_id,
                "category_id": int(round(float(classes[b, d]))),
                "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                "score": float(scores[b, d]),
            })
    return rows


def _quietly(function, *args, **kwargs):
    """Runs `function`, returning (its result, what it printed)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = function(*args, **kwargs)
    return result, buffer.getvalue()


def load_ground_truth(annotations: Union[str, dict]) -> COCO:
    """A COCO object from an annotations JSON file or an already loaded dict, without pycocotools' prints."""
    if isinstance(annotations, dict):
        coco, _ = _quietly(COCO)
        coco.dataset = copy.deepcopy(annotations)
        _quietly(coco.createIndex)
        return coco
    coco, _ = _quietly(COCO, str(annotations))
    return coco


class CocoEvaluator:
    """Accumulates detections (`add`) and scores them against COCO ground truth (`evaluate`).

    After `evaluate`, `summary_text` holds pycocotools' printed summary, `stats` the returned metrics and
    `per_class_ap()` the AP (IoU .50:.95, all areas, 100 detections) of every category.
    """

    def __init__(self, annotations_file: Union[str, dict]):
        self.ground_truth = load_ground_truth(annotations_file)
        self._known_images = set(self.ground_truth.getImgIds())
        self.rows: List[dict] = []
        self.seen_images: List[int] = []
        self._seen = set()
        self.summary_text = ""
        self.stats: Dict[str, float] = {}
        self._coco_eval: Optional[COCOeval] = None

    def reset(self):
        self.rows, self.seen_images, self._seen = [], [], set()
        self.summary_text, self.stats, self._coco_eval = "", {}, None

    def add(self, detections: Dict[str, np.ndarray], source_ids: Sequence) -> int:
        """Adds a batch: `detections` as `postprocess` returns them (numpy), `source_ids` [B] the images'.

        Every image counts as seen (and is evaluated) even without detections. Returns the rows added.
        """
        image_ids = [image_id_of(source_id) for source_id in np.asarray(source_ids, dtype=object).reshape(-1)]
        return self.add_rows(detections_to_coco_rows(detections, image_ids), image_ids)

    def add_rows(self, rows: List[dict], image_ids: Sequence[int]) -> int:
        """Adds COCO results rows and the images they were detected in (every one counts as seen, with
        detections or without). Returns the rows added."""
        unknown = [image_id for image_id in image_ids if image_id not in self._known_images]
        if unknown:
            raise ValueError(f"image ids {unknown[:5]} are not in the ground truth")
        self.rows.extend(rows)
        for image_id in image_ids:
            if image_id not in self._seen:
                self._seen.add(image_id)
                self.seen_images.append(image_id)
        return len(rows)

    def write_results(self, path: str):
        """The detections as a COCO results JSON file (a list of rows)."""
        with open(path, "w") as handle:
            json.dump(self.rows, handle)

    def _results(self) -> COCO:
        if self.rows:
            # loadRes adds fields (area, id, segmentation …) to the rows it gets: give it copies.
            results, _ = _quietly(self.ground_truth.loadRes, copy.deepcopy(self.rows))
            return results
        # loadRes cannot take an empty list: an empty results set, so every category scores 0.
        results, _ = _quietly(COCO)
        results.dataset = {"images": list(self.ground_truth.dataset["images"]),
                           "categories": copy.deepcopy(self.ground_truth.dataset["categories"]),
                           "annotations": []}
        _quietly(results.createIndex)
        return results

    def evaluate(self, image_ids: Optional[Iterable] = None) -> Dict[str, float]:
        """COCOeval (bbox) over `image_ids` (by default the images seen by `add`) → the 12 COCO metrics.

        Metrics are -1.0 where pycocotools finds no ground truth to score (e.g. APs without small objects).
        """
        if image_ids is None:
            image_ids = self.seen_images
        image_ids = sorted({image_id_of(image_id) for image_id in image_ids})
        if not image_ids:
            raise ValueError("nothing to evaluate: no images were added")
        coco_eval = COCOeval(self.ground_truth, self._results(), iouType="bbox")
        coco_eval.params.imgIds = image_ids
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.summary_text = buffer.getvalue()
        self._coco_eval = coco_eval
        self.stats = {name: float(value) for name, value in zip(METRIC_NAMES, coco_eval.stats)}
        return dict(self.stats)

    def per_class_ap(self) -> Dict[str, float]:
        """{category name: AP at IoU .50:.95, all areas, 100 detections} from the last `evaluate` (run now if
        there was none); -1.0 for a category without ground truth in the evaluated images."""
        if self._coco_eval is None:
            self.evaluate()
        precision = self._coco_eval.eval["precision"]  # [IoU, recall, category, area, max detections]
        table = {}
        for k, category_id in enumerate(self._coco_eval.params.catIds):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            name = self.ground_truth.cats[category_id]["name"]
            table[name] = float(np.mean(values)) if values.size else -1.0
        return table
