"""CocoEvaluator against pycocotools run directly, on a hand-made ground truth of 3 images and 2 categories."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from effdet.eval.coco_metrics import METRIC_NAMES, CocoEvaluator, detections_to_coco_rows, image_id_of

# Category ids 1 and 3 (not contiguous); areas: < 32² small, < 96² medium, else large.
GROUND_TRUTH = {
    "images": [{"id": 11, "width": 100, "height": 100, "file_name": "a.jpg"},
               {"id": 12, "width": 200, "height": 150, "file_name": "b.jpg"},
               {"id": 13, "width": 80, "height": 120, "file_name": "c.jpg"}],
    "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    "annotations": [
        {"id": 1, "image_id": 11, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0},
        {"id": 3, "image_id": 12, "category_id": 1, "bbox": [0, 0, 100, 120], "area": 12000, "iscrowd": 0},
        {"id": 4, "image_id": 12, "category_id": 3, "bbox": [100, 20, 50, 100], "area": 5000, "iscrowd": 1},
        {"id": 5, "image_id": 13, "category_id": 3, "bbox": [20, 30, 40, 50], "area": 2000, "iscrowd": 0},
        {"id": 6, "image_id": 13, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        {"id": 7, "image_id": 11, "category_id": 1, "bbox": [0, 60, 20, 30], "area": 600, "iscrowd": 0},
    ],
}

# Detections as `postprocess` returns them: (ymin, xmin, ymax, xmax), padded to 3 per image.
DETECTIONS = {
    "boxes": np.array([
        [[10, 10, 40, 40], [52, 48, 92, 88], [60, 0, 90, 20]],  # 11: exact cat, shifted dog, 2nd cat
        [[5, 0, 120, 95], [30, 110, 60, 140], [0, 0, 0, 0]],  # 12: good cat, dog inside the crowd box
        [[30, 20, 80, 60], [90, 50, 110, 70], [0, 0, 0, 0]],  # 13: exact dog, misplaced cat
    ], np.float32),
    "scores": np.array([[0.9, 0.8, 0.3], [0.7, 0.6, 0.0], [0.5, 0.4, 0.0]], np.float32),
    "classes": np.array([[1, 3, 1], [1, 3, 0], [3, 1, 0]], np.int32),
    "num_detections": np.array([3, 2, 2], np.int32),
}
SOURCE_IDS = np.array([b"11", b"12", b"13"], dtype=object)

# Image 11 has two cats, both found: per-category AP must use 100 detections per image, not 1.
# The same detections written by hand as COCO results rows ([x, y, w, h]).
ROWS = [
    {"image_id": 11, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
    {"image_id": 11, "category_id": 3, "bbox": [48, 52, 40, 40], "score": 0.8},
    {"image_id": 11, "category_id": 1, "bbox": [0, 60, 20, 30], "score": 0.3},
    {"image_id": 12, "category_id": 1, "bbox": [0, 5, 95, 115], "score": 0.7},
    {"image_id": 12, "category_id": 3, "bbox": [110, 30, 30, 30], "score": 0.6},
    {"image_id": 13, "category_id": 3, "bbox": [20, 30, 40, 50], "score": 0.5},
    {"image_id": 13, "category_id": 1, "bbox": [50, 90, 20, 20], "score": 0.4},
]


def direct_pycocotools(rows, image_ids):
    """COCO.loadRes + COCOeval exactly as pycocotools' own example does; (stats, per-category AP by id)."""
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = json.loads(json.dumps(GROUND_TRUTH))
        ground_truth.createIndex()
        results = ground_truth.loadRes(json.loads(json.dumps(rows)))
        coco_eval = COCOeval(ground_truth, results, "bbox")
        coco_eval.params.imgIds = sorted(image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    precision = coco_eval.eval["precision"][:, :, :, 0, -1]
    per_category = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k]
        per_category[category_id] = float(np.mean(values[values > -1]))
    return coco_eval.stats, per_category


def perfect_detections():
    boxes = np.zeros([3, 3, 4], np.float32)
    classes = np.zeros([3, 3], np.int32)
    counts = np.zeros([3], np.int32)
    for annotation in GROUND_TRUTH["annotations"]:
        if annotation["iscrowd"]:
            continue
        b = annotation["image_id"] - 11
        x, y, w, h = annotation["bbox"]
        boxes[b, counts[b]] = [y, x, y + h, x + w]
        classes[b, counts[b]] = annotation["category_id"]
        counts[b] += 1
    return {"boxes": boxes, "scores": np.where(classes > 0, 0.95, 0.0).astype(np.float32), "classes": classes,
            "num_detections": counts}


def test_detections_to_coco_rows_by_hand():
    rows = detections_to_coco_rows(DETECTIONS, SOURCE_IDS)
    assert len(rows) == 7  # padding past num_detections is dropped
    for row, expected in zip(rows, ROWS):
        assert row["image_id"] == expected["image_id"] and isinstance(row["image_id"], int)
        assert row["category_id"] == expected["category_id"] and isinstance(row["category_id"], int)
        np.testing.assert_allclose(row["bbox"], expected["bbox"])
        assert all(isinstance(v, float) for v in row["bbox"])
        assert row["score"] == pytest.approx(expected["score"])
    json.dumps(rows)  # plain Python types only


def test_detections_to_coco_rows_without_counts_keeps_all():
    detections = {key: value for key, value in DETECTIONS.items() if key != "num_detections"}
    assert len(detections_to_coco_rows(detections, ["11", "12", "13"])) == 9


def test_image_ids_from_source_ids():
    assert image_id_of(b"397133") == 397133
    assert image_id_of("42") == 42
    assert image_id_of(np.int64(7)) == 7
    with pytest.raises(ValueError):
        image_id_of(b"not-a-number")


def test_metrics_equal_pycocotools_run_directly(capsys):
    evaluator = CocoEvaluator(GROUND_TRUTH)
    evaluator.add(DETECTIONS, SOURCE_IDS)
    metrics = evaluator.evaluate()
    expected, expected_per_category = direct_pycocotools(ROWS, [11, 12, 13])
    assert list(metrics) == list(METRIC_NAMES)
    assert all(isinstance(value, float) for value in metrics.values())
    np.testing.assert_allclose([metrics[name] for name in METRIC_NAMES], expected, rtol=1e-6, atol=1e-9)
    # A case with errors, where the numbers mean something: neither perfect nor zero.
    assert 0.0 < metrics["AP"] < 1.0
    per_class = evaluator.per_class_ap()
    assert set(per_class) == {"cat", "dog"}
    assert per_class["cat"] == pytest.approx(expected_per_category[1])
    assert per_class["dog"] == pytest.approx(expected_per_category[3])
    assert per_class["cat"] != per_class["dog"]
    # pycocotools' prints are captured, not shown.
    assert capsys.readouterr().out == ""
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in evaluator.summary_text


def test_crowd_box_absorbs_the_detection_inside_it():
    # Without the crowd box, the dog inside it would be a false positive and lower the dog AP.
    evaluator = CocoEvaluator(GROUND_TRUTH)
    evaluator.add(DETECTIONS, SOURCE_IDS)
    evaluator.evaluate()
    with_crowd = evaluator.per_class_ap()["dog"]
    no_crowd = json.loads(json.dumps(GROUND_TRUTH))
    no_crowd["annotations"] = [a for a in no_crowd["annotations"] if not a["iscrowd"]]
    evaluator = CocoEvaluator(no_crowd)
    evaluator.add(DETECTIONS, SOURCE_IDS)
    evaluator.evaluate()
    assert evaluator.per_class_ap()["dog"] < with_crowd


def test_evaluation_is_restricted_to_the_images_seen():
    evaluator = CocoEvaluator(GROUND_TRUTH)
    batch = {key: value[:2] for key, value in DETECTIONS.items()}
    evaluator.add(batch, SOURCE_IDS[:2])
    metrics = evaluator.evaluate()
    expected, _ = direct_pycocotools(ROWS[:5], [11, 12])
    np.testing.assert_allclose([metrics[name] for name in METRIC_NAMES], expected, rtol=1e-6, atol=1e-9)
    everything, _ = direct_pycocotools(ROWS[:5], [11, 12, 13])
    assert metrics["AP"] != pytest.approx(everything[0])
    # Explicit image ids override the images seen.
    only_11 = evaluator.evaluate(image_ids=[11])
    expected_11, _ = direct_pycocotools(ROWS[:5], [11])
    np.testing.assert_allclose([only_11[name] for name in METRIC_NAMES], expected_11, rtol=1e-6, atol=1e-9)


def test_batches_accumulate():
    evaluator = CocoEvaluator(GROUND_TRUTH)
    for b in range(3):
        evaluator.add({key: value[b:b + 1] for key, value in DETECTIONS.items()}, SOURCE_IDS[b:b + 1])
    assert evaluator.seen_images == [11, 12, 13]
    assert len(evaluator.rows) == 7
    expected, _ = direct_pycocotools(ROWS, [11, 12, 13])
    np.testing.assert_allclose(list(evaluator.evaluate().values()), expected, rtol=1e-6, atol=1e-9)


def test_perfect_detections_score_one():
    evaluator = CocoEvaluator(GROUND_TRUTH)
    evaluator.add(perfect_detections(), ["11", "12", "13"])
    metrics = evaluator.evaluate()
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert evaluator.per_class_ap() == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_no_detections_score_zero_without_crashing():
    evaluator = CocoEvaluator(GROUND_TRUTH)
    empty = {"boxes": np.zeros([3, 4, 4]), "scores": np.zeros([3, 4]), "classes": np.zeros([3, 4], np.int32),
             "num_detections": np.zeros([3], np.int32)}
    assert evaluator.add(empty, SOURCE_IDS) == 0
    metrics = evaluator.evaluate()
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AR100"] == 0.0
    assert set(metrics) == set(METRIC_NAMES)
    assert evaluator.per_class_ap() == {"cat": 0.0, "dog": 0.0}
    assert "Average Precision" in evaluator.summary_text


def test_results_json_round_trips(tmp_path):
    evaluator = CocoEvaluator(GROUND_TRUTH)
    evaluator.add(DETECTIONS, SOURCE_IDS)
    metrics = evaluator.evaluate()
    path = tmp_path / "detections.json"
    evaluator.write_results(str(path))
    with open(path) as handle:
        rows = json.load(handle)
    assert rows == evaluator.rows
    assert set(rows[0]) == {"image_id", "category_id", "bbox", "score"}  # untouched by loadRes
    # pycocotools reads the file back as results, to the same numbers.
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = json.loads(json.dumps(GROUND_TRUTH))
        ground_truth.createIndex()
        coco_eval = COCOeval(ground_truth, ground_truth.loadRes(str(path)), "bbox")
        coco_eval.params.imgIds = [11, 12, 13]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    np.testing.assert_allclose([metrics[name] for name in METRIC_NAMES], coco_eval.stats, rtol=1e-6)


def test_annotations_from_a_file(tmp_path, capsys):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(GROUND_TRUTH))
    evaluator = CocoEvaluator(str(path))
    evaluator.add(DETECTIONS, SOURCE_IDS)
    expected, _ = direct_pycocotools(ROWS, [11, 12, 13])
    np.testing.assert_allclose(list(evaluator.evaluate().values()), expected, rtol=1e-6, atol=1e-9)
    assert capsys.readouterr().out == ""


def test_unknown_image_ids_are_rejected():
    evaluator = CocoEvaluator(GROUND_TRUTH)
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluator.add({key: value[:1] for key, value in DETECTIONS.items()}, [b"99"])
    with pytest.raises(ValueError, match="no images"):
        evaluator.evaluate()
