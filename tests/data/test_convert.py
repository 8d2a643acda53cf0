"""python -m effdet.data.convert / convert_coco / convert_voc: dirty COCO and VOC data in, records read back out."""
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from effdet.data import example
from effdet.data.convert import ConversionError, convert_coco, convert_voc
from effdet.data.convert.__main__ import main
from tests.conftest import REPO

W, H = 32, 24
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 7, "name": "train"}, {"id": 90, "name": "toothbrush"}]


def save(image: Image.Image, path, **options):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **options)


def jpeg_bytes(color=(200, 30, 40), size=(W, H)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_coco(root) -> dict:
    """A COCO-format dataset with one of each kind of dirty item; returns the paths."""
    images = os.path.join(root, "images")
    os.makedirs(images)
    with open(os.path.join(images, "rgb.jpg"), "wb") as handle:
        handle.write(jpeg_bytes())
    save(Image.new("L", (W, H), 128), os.path.join(images, "gray.png"))
    save(Image.new("CMYK", (W, H), (0, 0, 0, 0)), os.path.join(images, "cmyk.jpg"), format="JPEG")
    rgba = Image.new("RGBA", (W, H), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, W // 2, H))  # left half transparent → white
    save(rgba, os.path.join(images, "rgba.png"))
    with open(os.path.join(images, "negative.jpg"), "wb") as handle:
        handle.write(jpeg_bytes((10, 200, 10)))
    with open(os.path.join(images, "corrupt.jpg"), "wb") as handle:
        handle.write(jpeg_bytes()[:300])  # truncated
    palette = Image.new("P", (W, H), 1)
    palette.putpalette([0, 0, 0, 250, 250, 0] + [0] * 762)
    save(palette, os.path.join(images, "palette.png"))
    with open(os.path.join(images, "big.jpg"), "wb") as handle:
        handle.write(jpeg_bytes(size=(2 * W, 2 * H)))  # the JSON says 32x24: boxes are in those pixels

    def entry(image_id, name):
        return {"id": image_id, "file_name": name, "width": W, "height": H}

    coco = {
        "images": [entry(5, "negative.jpg"), entry(9, "big.jpg"), entry(2, "gray.png"), entry(1, "rgb.jpg"),
                   entry(3, "cmyk.jpg"), entry(4, "rgba.png"), entry(6, "corrupt.jpg"), entry(7, "missing.jpg"),
                   entry(8, "palette.png")],
        "categories": CATEGORIES,
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "area": 33.5, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [0, 0, 16, 12], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 4]},  # zero width
            {"id": 4, "image_id": 1, "category_id": 90, "bbox": [5, 5, 4, -3]},  # negative height
            {"id": 5, "image_id": 1, "category_id": 90, "bbox": [20, 10, 20, 20]},  # clipped to 20..32, 10..24
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": [40, 30, 5, 5]},  # wholly outside
            {"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown category
            {"id": 8, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]},  # unknown image
            {"id": 9, "image_id": 2, "category_id": 90, "bbox": [4, 4, 8, 8]},
            {"id": 10, "image_id": 3, "category_id": 7, "bbox": [1, 1, 30, 22]},
            {"id": 11, "image_id": 4, "category_id": 1, "bbox": [-4, -2, 10, 10]},  # clipped to 0..6, 0..8
            {"id": 12, "image_id": 6, "category_id": 1, "bbox": [1, 1, 5, 5]},  # its image is corrupt
            {"id": 13, "image_id": 7, "category_id": 7, "bbox": [1, 1, 5, 5]},  # its image is missing
            {"id": 14, "image_id": 9, "category_id": 1, "bbox": [8, 6, 16, 12]},
            {"id": 15, "image_id": 3, "category_id": 1, "bbox": [0, 0, W, H], "iscrowd": 1},  # exactly the image
            {"id": 16, "image_id": 2, "category_id": 1, "bbox": [math.nan, 1, 2, 2]},  # not finite
        ],
    }
    annotations = os.path.join(root, "instances.json")
    with open(annotations, "w") as handle:
        json.dump(coco, handle)  # writes NaN, as Python does
    return {"image_dir": images, "annotations_file": annotations}


# Per written image, in record order (sorted ids): (height, width, boxes in pixels of 32x24 (y0, x0, y1, x1),
# labels, crowd, areas).
EXPECTED = {
    "1": (H, W, [(3, 2, 11, 12), (0, 0, 12, 16), (10, 20, 24, 32)], [1, 7, 90], [0, 1, 0], [33.5, 192, 168]),
    "2": (H, W, [(4, 4, 12, 12)], [90], [0], [64]),
    "3": (H, W, [(1, 1, 23, 31), (0, 0, H, W)], [7, 1], [0, 1], [660, W * H]),
    "4": (H, W, [(0, 0, 8, 6)], [1], [0], [48]),
    "5": (H, W, [], [], [], []),
    "8": (H, W, [], [], [], []),
    "9": (2 * H, 2 * W, [(6, 8, 18, 24)], [1], [0], [192]),
}
EXPECTED_IMAGES = {
    "listed": 9, "written": 7, "negatives": 2, "size_mismatch": 1,
    "dropped": {"missing_file": 1, "unreadable": 1, "duplicate_id": 0},
    "converted": {"JPEG CMYK": 1, "PNG L": 1, "PNG P": 1, "PNG RGBA": 1},
}
EXPECTED_OBJECTS = {
    "listed": 16, "written": 8, "crowd": 2, "clipped": 2,
    "dropped": {"unknown_image": 1, "unknown_category": 1, "malformed": 1, "non_positive_size": 2,
                "image_dropped": 2, "outside_image": 1},
    "per_class": {"1": 4, "7": 2, "90": 2},
}


def shards(prefix, num_shards):
    return [f"{prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def read_back(paths):
    """Every record of `paths` (in order) through example.parse inside tf.data, as numpy."""
    dataset = tf.data.TFRecordDataset(paths).map(example.parse)
    return [{key: value.numpy() for key, value in record.items()} for record in dataset]


def raw_examples(paths):
    return [tf.train.Example.FromString(raw.numpy()) for raw in tf.data.TFRecordDataset(paths)]


def feature(ex, key):
    value = ex.features.feature[key]
    return list(getattr(value, value.WhichOneof("kind")).value) if value.WhichOneof("kind") else []


@pytest.fixture(scope="module")
def coco_dataset(tmp_path_factory):
    return make_coco(str(tmp_path_factory.mktemp("coco")))


@pytest.fixture(scope="module")
def converted(coco_dataset, tmp_path_factory):
    """The dataset converted once into one shard (with 2 workers), shared by the read-back tests."""
    prefix = os.path.join(str(tmp_path_factory.mktemp("out")), "records", "train")
    summary = convert_coco(coco_dataset["image_dir"], coco_dataset["annotations_file"], prefix, num_shards=1,
                           num_workers=2, progress=False)
    return prefix, summary


def test_coco_round_trip_boxes_labels_and_images(converted):
    prefix, _ = converted
    records = read_back(shards(prefix, 1))
    assert [r["source_id"].decode() for r in records] == list(EXPECTED)
    for record in records:
        height, width, boxes, labels, crowd, areas = EXPECTED[record["source_id"].decode()]
        assert record["image"].shape == (height, width, 3)
        expected_boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32([H, W, H, W])
        np.testing.assert_allclose(record["boxes"], expected_boxes, atol=1e-6)
        assert record["boxes"].min(initial=0) >= 0 and record["boxes"].max(initial=1) <= 1
        assert record["classes"].tolist() == labels
        assert record["is_crowd"].astype(int).tolist() == crowd
        np.testing.assert_allclose(record["areas"], np.asarray(areas, np.float32).reshape(-1), rtol=1e-6)


def test_coco_images_are_rgb_jpegs_and_rgb_jpegs_are_kept_as_they_are(converted, coco_dataset):
    prefix, _ = converted
    by_id = {feature(ex, example.SOURCE_ID)[0].decode(): ex for ex in raw_examples(shards(prefix, 1))}
    for source_id, ex in by_id.items():
        encoded = feature(ex, example.ENCODED)[0]
        image = Image.open(io.BytesIO(encoded))
        assert (image.format, image.mode) == ("JPEG", "RGB"), source_id
        assert feature(ex, example.FORMAT) == [b"jpeg"]
        assert (feature(ex, example.HEIGHT), feature(ex, example.WIDTH)) == ([image.height], [image.width])
    with open(os.path.join(coco_dataset["image_dir"], "rgb.jpg"), "rb") as handle:
        assert feature(by_id["1"], example.ENCODED)[0] == handle.read()
    assert feature(by_id["1"], example.TEXT) == [b"person", b"train", b"toothbrush"]
    assert feature(by_id["1"], example.FILENAME) == [b"rgb.jpg"]

    def pixel(source_id, x, y):
        return np.asarray(Image.open(io.BytesIO(feature(by_id[source_id], example.ENCODED)[0])))[y, x]

    np.testing.assert_allclose(pixel("2", 5, 5), [128, 128, 128], atol=3)  # grayscale
    np.testing.assert_allclose(pixel("3", 5, 5), [255, 255, 255], atol=3)  # CMYK (0, 0, 0, 0) is white
    np.testing.assert_allclose(pixel("4", 3, 5), [255, 255, 255], atol=3)  # transparent → white
    np.testing.assert_allclose(pixel("4", W - 3, 5), [0, 0, 255], atol=3)
    np.testing.assert_allclose(pixel("8", 5, 5), [250, 250, 0], atol=4)  # palette


def test_coco_summary_counts_every_dirty_item(converted):
    prefix, summary = converted
    assert summary["images"] == EXPECTED_IMAGES
    assert summary["objects"] == EXPECTED_OBJECTS
    for part in (summary["images"], summary["objects"]):  # everything listed is counted exactly once
        assert part["listed"] == part["written"] + sum(part["dropped"].values())
    directory = os.path.dirname(prefix)
    with open(os.path.join(directory, "train.summary.json")) as handle:
        assert json.load(handle) == summary
    with open(os.path.join(directory, example.LABEL_MAP_FILE)) as handle:
        assert json.load(handle) == {"1": "person", "7": "train", "90": "toothbrush"}
    assert sorted(os.listdir(directory)) == ["label_map.json", "train-00000-of-00001.tfrecord", "train.summary.json"]


def test_output_is_identical_for_any_number_of_workers(coco_dataset, tmp_path):
    outputs = {}
    for workers in (1, 2):
        directory = tmp_path / f"workers{workers}"
        convert_coco(coco_dataset["image_dir"], coco_dataset["annotations_file"], str(directory / "train"),
                     num_shards=2, num_workers=workers, progress=False)
        outputs[workers] = {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}
    assert len(outputs[1]) == 4  # 2 shards, label map, summary
    assert outputs[1] == outputs[2]


def test_records_go_round_robin_to_the_shards(coco_dataset, tmp_path):
    prefix = str(tmp_path / "train")
    convert_coco(coco_dataset["image_dir"], coco_dataset["annotations_file"], prefix, num_shards=3,
                 num_workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.glob("train-*")) == [os.path.basename(p) for p in shards(prefix, 3)]
    ids = [[r["source_id"].decode() for r in read_back([path])] for path in shards(prefix, 3)]
    order = list(EXPECTED)  # written records in id order: record i → shard i % 3
    assert ids == [order[0::3], order[1::3], order[2::3]]


def test_caption_file_adds_image_captions(coco_dataset, tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({"annotations": [
        {"image_id": 1, "caption": "a red square"}, {"image_id": 2, "caption": "grey"},
        {"image_id": 1, "caption": "still red"}, {"image_id": 404, "caption": "nobody"}]}))
    summary = convert_coco(coco_dataset["image_dir"], coco_dataset["annotations_file"], str(tmp_path / "train"),
                           num_shards=1, num_workers=1, caption_file=str(captions), progress=False)
    records = raw_examples([str(tmp_path / "train-00000-of-00001.tfrecord")])
    by_id = {feature(ex, example.SOURCE_ID)[0]: ex for ex in records}
    assert feature(by_id[b"1"], example.CAPTION) == [b"a red square", b"still red"]
    assert feature(by_id[b"2"], example.CAPTION) == [b"grey"]
    assert example.CAPTION not in by_id[b"3"].features.feature
    assert summary["captions"] == {"written": 3, "unknown_image": 1}


def test_cli_prints_the_summary_table(coco_dataset, tmp_path, capsys):
    code = main(["coco", "--image_dir", coco_dataset["image_dir"], "--object_annotations_file",
                 coco_dataset["annotations_file"], "--output_file_prefix", str(tmp_path / "val"), "--num_shards", "2",
                 "--num_workers", "1"])
    out = capsys.readouterr().out
    assert code == 0
    lines = {line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1]) for line in out.splitlines()[1:]}
    assert lines["images listed"] == 9 and lines["dropped: missing file"] == 1
    assert lines["dropped: unreadable image"] == 1 and lines["converted to RGB JPEG from PNG RGBA"] == 1
    assert lines["clipped to the image"] == 2 and lines["dropped: zero or negative size"] == 2
    assert lines["dropped: outside the image"] == 1 and lines["dropped: its image dropped"] == 2
    assert (tmp_path / "val.summary.json").exists() and (tmp_path / "val-00001-of-00002.tfrecord").exists()


MALFORMED = {
    "not_json": "{'images': []",
    "not_an_object": "[1, 2, 3]",
    "missing_categories": json.dumps({"images": [], "annotations": []}),
    "images_not_a_list": json.dumps({"images": {}, "annotations": [], "categories": []}),
    "bbox_wrong_type": json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": CATEGORIES,
                                   "annotations": [{"image_id": 1, "category_id": 1, "bbox": "1 2 3 4"}]}),
    "string_category_id": json.dumps({"images": [], "annotations": [], "categories": [{"id": "1", "name": "a"}]}),
}


def run_module(*args):
    """`python -m effdet.data.convert args...` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "effdet.data.convert", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_malformed_annotation_file_exits_2_with_one_line_naming_it(tmp_path):
    annotations = tmp_path / "instances.json"
    annotations.write_text(MALFORMED["missing_categories"])
    (tmp_path / "images").mkdir()
    result = run_module("coco", "--image_dir", str(tmp_path / "images"), "--object_annotations_file",
                        str(annotations), "--output_file_prefix", str(tmp_path / "out" / "train"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert message == [f"error: {annotations}: missing 'categories' (needs 'images', 'annotations', 'categories')"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_each_malformation_is_one_error_naming_the_file(case, tmp_path, capsys):
    annotations = tmp_path / f"{case}.json"
    annotations.write_text(MALFORMED[case])
    (tmp_path / "images").mkdir()
    code = main(["coco", "--image_dir", str(tmp_path / "images"), "--object_annotations_file", str(annotations),
                 "--output_file_prefix", str(tmp_path / "out" / "train")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: {annotations}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_missing_image_dir_is_one_error(coco_dataset, tmp_path, capsys):
    missing = str(tmp_path / "no-such-dir")
    with pytest.raises(ConversionError, match="no-such-dir"):
        convert_coco(missing, coco_dataset["annotations_file"], str(tmp_path / "train"), 1, progress=False)
    code = main(["coco", "--image_dir", missing, "--object_annotations_file", coco_dataset["annotations_file"],
                 "--output_file_prefix", str(tmp_path / "train")])
    assert code == 2 and capsys.readouterr().err == f"error: {missing}: image directory not found\n"


VOC_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{box[0]}</xmin>"
              "<ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>")


def test_voc_round_trip_keeps_difficult_objects_as_crowd(tmp_path):
    root = tmp_path / "VOC2012"
    objects = {
        "2008_000002": [("dog", 0, (2, 3, 12, 11)), ("person", 1, (10, 0, 40, 20)), ("unicorn", 0, (1, 1, 4, 4))],
        "2008_000001": [("aeroplane", 0, (0, 0, 32, 24)), ("tvmonitor", 1, (5, 5, 5, 9))],
    }
    for name in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / name).mkdir(parents=True)
    for image_id, items in objects.items():
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg_bytes())
        xml = VOC_XML.format(id=image_id, w=W, h=H, objects="".join(
            VOC_OBJECT.format(name=n, difficult=d, box=b) for n, d, b in items))
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
    (root / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n2008_000001\n")

    summary = convert_voc(str(root), "train", str(tmp_path / "out" / "voc-train"), num_shards=2, num_workers=1,
                          progress=False)
    records = read_back(shards(str(tmp_path / "out" / "voc-train"), 2))
    assert [r["source_id"].decode() for r in records] == ["2008000001", "2008000002"]
    first, second = records
    np.testing.assert_allclose(first["boxes"], [[0, 0, 1, 1]], atol=1e-6)
    assert first["classes"].tolist() == [1] and first["is_crowd"].tolist() == [False]
    np.testing.assert_allclose(second["boxes"], [[3 / H, 2 / W, 11 / H, 12 / W], [0, 10 / W, 20 / H, 1]], atol=1e-6)
    assert second["classes"].tolist() == [12, 15]  # dog, person
    assert second["is_crowd"].tolist() == [False, True]  # difficult → crowd
    assert summary["objects"]["dropped"] == {"unknown_category": 1, "malformed": 0, "non_positive_size": 1,
                                             "image_dropped": 0, "outside_image": 0}
    assert (summary["objects"]["written"], summary["objects"]["crowd"], summary["objects"]["clipped"]) == (3, 1, 1)
    with open(tmp_path / "out" / "label_map.json") as handle:
        label_map = json.load(handle)
    assert len(label_map) == 20 and label_map["1"] == "aeroplane" and label_map["20"] == "tvmonitor"
