"""The dataset doctor's findings (mode=check_data): what in a dataset makes training fail or AP wrong.

One pass over each split's records finds the damaged ones, the images that do not decode, class ids outside
1..num_classes, images without objects and duplicate images; then it measures the boxes as the model sees
them (resized as evaluation resizes them) and how many of them any anchor can match, with the project's own
anchor labeler; and it compares the val records with the val JSON.
"""
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from effdet.data.reader import CorruptRecords, ShardReader, example_fields, image_header
from effdet.data.targets import AnchorLabeler

# COCO's object sizes, by area in pixels (here: of the model's input)
SIZE_BUCKETS = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))
EXAMPLES = 5  # ids quoted per finding
DECODE_BLOCK = 256  # images decoded together, in parallel
SUGGESTION_MARGIN = 0.01  # a candidate is suggested when it covers at least this share more boxes


@dataclass
class SplitScan:
    """What one pass over a split's records found."""

    split: str
    files: List[str]
    records: int = 0  # records that pass their CRCs
    undecodable: int = 0
    unparsable: int = 0
    without_objects: int = 0
    objects: Dict[int, int] = field(default_factory=dict)  # class id → count (crowd boxes included)
    bad_class_ids: Dict[int, int] = field(default_factory=dict)
    bad_class_examples: List[str] = field(default_factory=list)
    degenerate_boxes: int = 0  # empty, inverted or outside the image
    too_small_boxes: int = 0  # thinner than a pixel once resized: training drops them
    boxes: List[np.ndarray] = field(default_factory=list)  # [N, 4] per image, non-crowd, in input pixels
    source_ids: List[str] = field(default_factory=list)
    hashes: Dict[str, List[str]] = field(default_factory=dict)  # image bytes' digest → source ids
    capped: bool = False  # check_data.max_records stopped the pass early
    corrupt: Optional[dict] = None  # CorruptRecords.counts()

    def input_boxes(self) -> np.ndarray:
        return np.concatenate(self.boxes).astype(np.float32) if self.boxes else np.zeros([0, 4], np.float32)


def scan_split(split: str, files: Sequence[str], image_size: Tuple[int, int], num_classes: int,
               max_records: Optional[int] = None, progress: Callable[[int], None] = lambda n: None,
               decode_threads: int = 0) -> SplitScan:
    """Reads every record of `files` (the first `max_records`), checking each as training would read it, and
    decoding every image (in parallel, in TensorFlow) to find those that do not decode."""
    scan = SplitScan(split, list(files))
    tally = CorruptRecords(split)
    block = []  # (source id, fields, (height, width), (shard, offset)) of records whose headers are fine

    def finish(block):
        sizes = _decoded_sizes([fields["encoded"] for _, fields, _, _ in block], decode_threads)
        for index, (source_id, fields, (height, width), where) in enumerate(block):
            if index not in sizes:
                scan.undecodable += 1
                tally.bad(*where, "its image does not decode")
                continue
            if height <= 0 or width <= 0:
                height, width = sizes[index]
            _add_objects(scan, source_id, fields, height, width, image_size, num_classes)
            scan.source_ids.append(source_id)
            digest = hashlib.blake2b(fields["encoded"], digest_size=16).hexdigest()
            scan.hashes.setdefault(digest, []).append(source_id)

    for path in files:
        for record, offset, _ in ShardReader(path, tally).all_records():
            if max_records is not None and scan.records >= max_records:
                scan.capped = True
                break
            scan.records += 1
            progress(1)
            problem, fields = example_fields(record)
            if problem:  # the reader has counted it in the tally
                scan.unparsable += 1
                continue
            header_problem, header_size = image_header(fields["encoded"], (fields["height"], fields["width"]))
            if header_problem:
                scan.undecodable += 1
                continue
            height, width = fields["height"], fields["width"]
            if height <= 0 or width <= 0:
                height, width = header_size
            block.append((fields["source_id"].decode("utf-8", "replace"), fields, (height, width), (path, offset)))
            if len(block) == DECODE_BLOCK:
                finish(block)
                block = []
        if scan.capped:
            break
    finish(block)
    scan.corrupt = tally.counts()
    return scan


def _decoded_sizes(images: List[bytes], threads: int) -> Dict[int, Tuple[int, int]]:
    """index → (height, width) of every image TensorFlow decodes; the others are missing."""
    if not images:
        return {}

    def decode(index, data):
        # JPEGs at 1/8 scale: the whole compressed stream is still read (and any damage found), a few times faster
        image = tf.cond(tf.io.is_jpeg(data), lambda: tf.io.decode_jpeg(data, channels=3, ratio=8),
                        lambda: tf.io.decode_image(data, channels=3, expand_animations=False))
        return index, tf.shape(image)[:2]

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(images), dtype=tf.int64), tf.constant(images)))
    dataset = dataset.map(decode, num_parallel_calls=threads or tf.data.AUTOTUNE).ignore_errors()
    return {int(index): tuple(int(v) for v in shape) for index, shape in dataset.as_numpy_iterator()}


def _add_objects(scan: SplitScan, source_id: str, fields: dict, height: int, width: int,
                 image_size: Tuple[int, int], num_classes: int) -> None:
    labels = list(fields["labels"])
    if not labels:
        scan.without_objects += 1
        return
    is_crowd = list(fields["is_crowd"]) if len(fields["is_crowd"]) == len(labels) else [0] * len(labels)
    for label in labels:
        scan.objects[int(label)] = scan.objects.get(int(label), 0) + 1
        if not 1 <= label <= num_classes:
            scan.bad_class_ids[int(label)] = scan.bad_class_ids.get(int(label), 0) + 1
            if len(scan.bad_class_examples) < EXAMPLES and source_id not in scan.bad_class_examples:
                scan.bad_class_examples.append(source_id)
    ymin, xmin, ymax, xmax = (np.asarray(c, np.float64) for c in fields["boxes"])
    degenerate = (ymax <= ymin) | (xmax <= xmin) | (ymin < 0) | (xmin < 0) | (ymax > 1) | (xmax > 1)
    scan.degenerate_boxes += int(degenerate.sum())
    # evaluation's resize: the whole image fitted into the input (training's scale jitter spreads around it)
    scale = min(image_size[0] / height, image_size[1] / width)
    pixels = np.stack([np.clip(ymin, 0, 1) * height, np.clip(xmin, 0, 1) * width,
                       np.clip(ymax, 0, 1) * height, np.clip(xmax, 0, 1) * width], axis=1) * scale
    keep = ~degenerate & (np.asarray(is_crowd) == 0)
    thin = ((pixels[:, 2] - pixels[:, 0]) < 1) | ((pixels[:, 3] - pixels[:, 1]) < 1)
    scan.too_small_boxes += int((keep & thin).sum())
    kept = pixels[keep & ~thin]
    if len(kept):
        scan.boxes.append(kept)


# --- anchors ------------------------------------------------------------------------------------------------------

def coverage(labeler: AnchorLabeler, boxes: np.ndarray) -> Dict[str, dict]:
    """The share of `boxes` (input pixels) that have an anchor at IoU ≥ the labeler's match threshold, overall
    and by COCO size bucket: {"all": {"boxes", "covered", "coverage"}, "small": ..., ...}."""
    best = best_ious(labeler, boxes)
    covered = best >= labeler.match_threshold
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if len(boxes) else np.zeros([0])
    result = {"all": _share(covered)}
    for name, low, high in SIZE_BUCKETS:
        result[name] = _share(covered[(areas >= low) & (areas < high)])
    return result


def _share(covered: np.ndarray) -> dict:
    count = int(covered.size)
    return {"boxes": count, "covered": int(covered.sum()), "coverage": float(covered.mean()) if count else None}


def best_ious(labeler: AnchorLabeler, boxes: np.ndarray) -> np.ndarray:
    """Each box's best IoU with an anchor, in chunks that keep the [boxes, anchors] overlaps small."""
    if not len(boxes):
        return np.zeros([0], np.float32)
    chunk = max(16, (1 << 23) // int(labeler.anchors.shape[0]))
    return np.concatenate([labeler.best_iou(tf.constant(boxes[start:start + chunk])).numpy()
                           for start in range(0, len(boxes), chunk)])


def anchor_sizes(labeler: AnchorLabeler) -> Dict[int, List[float]]:
    """Level → the side of its square anchors (one per octave scale), in input pixels."""
    settings = labeler.anchor_settings
    return {level: [settings["anchor_scale"] * 2 ** (octave / settings["num_scales"]) * 2 ** level
                    for octave in range(settings["num_scales"])]
            for level in range(settings["min_level"], settings["max_level"] + 1)}


def labeler_like(labeler: AnchorLabeler, anchor_scale: Optional[float] = None,
                 image_size: Optional[Tuple[int, int]] = None) -> AnchorLabeler:
    settings = dict(labeler.anchor_settings)
    if anchor_scale is not None:
        settings["anchor_scale"] = anchor_scale
    return AnchorLabeler(image_size or labeler.image_size, settings["min_level"], settings["max_level"],
                         settings["num_scales"], list(settings["aspect_ratios"]), settings["anchor_scale"],
                         labeler.match_threshold)


def suggestions(labeler: AnchorLabeler, boxes: np.ndarray, anchor_scales: Sequence[float],
                image_sizes: Sequence[int], max_boxes: int, seed: int = 0) -> dict:
    """The coverage of each candidate model.anchor_scale (at the model's input size) and of each candidate
    model.image_size (at its anchor scale), on the same sample of at most `max_boxes` boxes, and the best of each."""
    if len(boxes) > max_boxes:
        boxes = boxes[np.sort(np.random.default_rng(seed).choice(len(boxes), max_boxes, replace=False))]
    current_scale = labeler.anchor_settings["anchor_scale"]
    scales = sorted({float(s) for s in anchor_scales} | {float(current_scale)})
    by_scale = {scale: coverage(labeler_like(labeler, anchor_scale=scale), boxes)["all"]["coverage"]
                for scale in scales}
    size = labeler.image_size
    by_size = {}
    for side in sorted({int(s) for s in image_sizes} | {int(size[0])}):
        factor = side / size[0]
        target = (side, int(round(size[1] * factor)))
        by_size[side] = coverage(labeler_like(labeler, image_size=target), boxes * factor)["all"]["coverage"]

    def best(table, current):  # the highest coverage, unless the model's own is within a point of it
        if not boxes.size or table[current] >= max(table.values()) - SUGGESTION_MARGIN:
            return current
        return max(table, key=lambda key: (table[key], -abs(key - current)))

    return {"boxes": int(len(boxes)),
            "anchor_scale": {"current": float(current_scale), "best": best(by_scale, current_scale),
                             "coverage": by_scale},
            "image_size": {"current": int(size[0]), "best": best(by_size, size[0]), "coverage": by_size}}


def default_image_sizes(image_size: int, multiple: int = 32) -> List[int]:
    """1.5× and 2× the model's input, in multiples of 32."""
    return sorted({int(round(image_size * factor / multiple)) * multiple for factor in (1.5, 2.0)})


# --- the val split against its JSON -----------------------------------------------------------------------------

def val_consistency(val: SplitScan, val_json_file: str) -> dict:
    """Val records whose image id is not in the val JSON, and JSON images that no record holds (known only when
    the whole split was read). Either makes AP wrong: the evaluator refuses the first and scores without the
    second."""
    with tf.io.gfile.GFile(val_json_file) as handle:
        ground_truth = json.load(handle)
    in_json = {int(image["id"]) for image in ground_truth.get("images", [])}
    not_ids, recorded = [], set()
    for source_id in val.source_ids:
        try:
            recorded.add(int(source_id.strip()))
        except ValueError:
            not_ids.append(source_id)
    not_in_json = sorted(recorded - in_json)
    without_record = sorted(in_json - recorded) if not val.capped else []
    return {"json_images": len(in_json), "records_not_in_json": len(not_in_json),
            "records_not_in_json_examples": not_in_json[:EXAMPLES], "source_ids_not_image_ids": len(not_ids),
            "source_ids_not_image_ids_examples": not_ids[:EXAMPLES], "json_images_without_record": len(without_record),
            "json_images_without_record_examples": without_record[:EXAMPLES],
            "categories": {int(c["id"]): str(c.get("name", c["id"])) for c in ground_truth.get("categories", [])}}


def duplicates(scans: Sequence[SplitScan]) -> dict:
    """Images whose encoded bytes are identical: within a split (the same image weighs twice) and across splits
    (a val image that was trained on)."""
    result = {}
    owners: Dict[str, Dict[str, List[str]]] = {}
    for scan in scans:
        repeated = [ids for ids in scan.hashes.values() if len(ids) > 1]
        result[f"within_{scan.split}"] = sum(len(ids) - 1 for ids in repeated)
        result[f"within_{scan.split}_examples"] = [ids[:2] for ids in repeated[:EXAMPLES]]
        for digest, ids in scan.hashes.items():
            owners.setdefault(digest, {})[scan.split] = ids
    across = [split_ids for split_ids in owners.values() if len(split_ids) > 1]
    result["across_splits"] = len(across)
    result["across_splits_examples"] = [{split: ids[0] for split, ids in item.items()} for item in across[:EXAMPLES]]
    return result
