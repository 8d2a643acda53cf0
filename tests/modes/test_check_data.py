"""mode=check_data, the dataset doctor: on a dataset built here with known faults it finds each of them, and its
anchor coverage is the labeler's own, checked against boxes whose best IoU is worked out by hand."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from effdet.data.check import best_ious, coverage, suggestions
from effdet.data.example import DetectionRecord
from effdet.data.targets import AnchorLabeler
from tests.conftest import run_cli
from tests.data.test_pipeline import write_records
from tests.data.test_reader import damage, record_offsets

SIZE = 64


def p3_to_p5(anchor_scale=4.0, size=SIZE):
    return AnchorLabeler((size, size), 3, 5, 3, [1.0, 2.0, 0.5], anchor_scale)


def test_best_iou_is_what_an_anchor_of_the_table_gives_worked_out_by_hand():
    # P3: stride 8, centres at 4, 12, 20, ...; octave 1 of scale 4 is a square of side 4·2^(1/3)·8 ≈ 40.3 px.
    # Centred at (12, 12) it contains the 32-px box at the corner, and nothing does better: IoU = 32² / 40.3².
    side = 4 * 2 ** (1 / 3) * 8
    boxes = np.array([[0, 0, 32, 32], [0, 0, 4, 4]], np.float32)  # the 4-px box sits inside a 32-px anchor at best
    np.testing.assert_allclose(best_ious(p3_to_p5(), boxes), [32 ** 2 / side ** 2, 16 / 32 ** 2], rtol=1e-5)
    found = coverage(p3_to_p5(), boxes)
    assert found["all"] == {"boxes": 2, "covered": 1, "coverage": 0.5}
    assert found["small"]["coverage"] == 0.0 and found["medium"]["coverage"] == 1.0  # 4² < 32² ≤ 32² < 96²


def test_the_suggestion_is_the_smaller_anchor_scale_that_covers_small_objects():
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 100, size=(200, 2))
    sides = rng.uniform(8, 14, size=(200, 1))
    boxes = np.concatenate([corners, corners + sides], axis=1).astype(np.float32)  # 8-14 px objects at 128
    found = suggestions(p3_to_p5(4.0, size=128), boxes, anchor_scales=[1.0, 2.0, 4.0], image_sizes=[256],
                        max_boxes=1000)
    by_scale = found["anchor_scale"]["coverage"]
    best = found["anchor_scale"]["best"]
    assert by_scale[4.0] < 0.1 and best < 4.0 and by_scale[best] > 0.5 and by_scale[best] == max(by_scale.values())
    assert found["image_size"]["best"] == 256  # twice the input: the objects reach the 32-px anchors


def jpeg(colour, size=SIZE):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def record(source_id, boxes, labels, colour):
    return DetectionRecord(jpeg(colour), str(source_id), SIZE, SIZE, boxes=np.asarray(boxes, np.float32) / SIZE,
                           labels=labels, is_crowd=[0] * len(labels), areas=[1.0] * len(labels))


def test_check_data_finds_every_fault_of_a_small_dataset_and_exits_1(tmp_path):
    big, tiny = [0, 0, 32, 32], [0, 0, 4, 4]  # one covered, one no anchor can match (above)
    train = [record(1, [big], [1], (200, 0, 0)), record(2, [big, tiny], [1, 2], (0, 200, 0)),
             record(3, [big], [9], (0, 0, 200)),  # class 9 of 3
             record(4, [], [], (90, 90, 90)), record(5, [big], [3], (10, 10, 10))]
    write_records(tmp_path / "train-0.tfrecord", train)
    shard = str(tmp_path / "train-0.tfrecord")
    damage(shard, record_offsets(shard)[4] + 100, flip=20)  # record 5: fails its CRC
    val = [record(11, [big], [1], (200, 0, 0)),  # the same bytes as train image 1
           record(12, [big], [2], (1, 2, 3)), record(13, [big], [3], (3, 2, 1))]
    write_records(tmp_path / "val-0.tfrecord", val)
    (tmp_path / "val.json").write_text(json.dumps({
        "images": [{"id": i, "width": SIZE, "height": SIZE} for i in (11, 12, 14)],  # 13 has no entry, 14 no record
        "annotations": [],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "owl"}]}))
    run_dir = tmp_path / "run"
    result = run_cli("mode=check_data", "data=coco", f"data.train_file_pattern={tmp_path}/train-*",
                     f"data.val_file_pattern={tmp_path}/val-*", f"data.val_json_file={tmp_path}/val.json",
                     "data.num_classes=3", f"model.image_size={SIZE}", "model.anchor_scale=4",
                     "check_data.anchor_scales=[4.0]", "check_data.image_sizes=[64]", f"hydra.run.dir={run_dir}")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    train_report, val_report = report["splits"]["train"], report["splits"]["val"]
    assert train_report["records"] == 4 and train_report["corrupt_records"] == 1
    assert list(train_report["corrupt_by_shard"]) == [shard]
    assert train_report["objects"] == {"1": 2, "2": 1, "9": 1} and train_report["bad_class_ids"] == {"9": 1}
    assert train_report["without_objects"] == 1
    # 4 boxes: three 32-px squares (covered), one 4-px square (no anchor reaches IoU 0.5)
    assert train_report["anchor_coverage"]["all"] == {"boxes": 4, "covered": 3, "coverage": 0.75}
    assert val_report["objects"] == {"1": 1, "2": 1, "3": 1}
    consistency = report["val_consistency"]
    assert consistency["records_not_in_json_examples"] == [13]
    assert consistency["json_images_without_record_examples"] == [14]
    assert report["duplicates"]["across_splits"] == 1
    errors = " ".join(report["errors"])
    for expected in ("class ids outside 1..3", "only 75.0% of the boxes", "not in", "have no record",
                     "1 of 5 train records read are corrupt"):
        assert expected in errors, (expected, report["errors"])
    assert "cat" in result.stdout and "error: the data check found 5 error(s)" in result.stderr
    assert (run_dir / "data_report.png").stat().st_size > 10_000


@pytest.mark.parametrize("anchor_scale, exit_code", [(2, 0), (3, 1)])
def test_check_data_on_the_default_data_passes_with_the_recipe_and_finds_lite0s_own_scale_short(
        tmp_path, anchor_scale, exit_code):
    """`python run.py mode=check_data`: the shapes recipe's anchor scale covers its objects; lite0's own scale 3
    at 128 px leaves small objects without an anchor, and the doctor says to use a smaller one."""
    run_dir = tmp_path / "run"
    result = run_cli("mode=check_data", "data.synthetic.num_train=48", "data.synthetic.num_val=8",
                     f"data.cache_dir={tmp_path / 'cache'}", f"model.anchor_scale={anchor_scale}",
                     f"hydra.run.dir={run_dir}")
    assert result.returncode == exit_code, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["splits"]["train"]["records"] == 48 and report["splits"]["val"]["records"] == 8
    small = report["splits"]["train"]["anchor_coverage"]["small"]["coverage"]
    if exit_code:
        assert small < 0.8 and report["suggestions"]["anchor_scale"]["best"] < anchor_scale
        assert "suggestion: model.anchor_scale=" in result.stdout
    else:
        assert "no errors" in result.stdout and small > 0.8
    assert (run_dir / "data_report.png").exists()
