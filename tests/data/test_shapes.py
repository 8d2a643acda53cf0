"""The synthetic shapes dataset: deterministic files, valid COCO annotations, tight boxes, and the cache."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from effdet.data import shapes
from effdet.data.shapes import CLASS_NAMES, ensure_shapes, generate_shapes, shapes_is_complete

SMALL = dict(num_train=12, num_val=4, image_size=(96, 96))


def tree_bytes(root):
    """{relative path: bytes} of every file under root."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def load(root, split):
    with open(shapes.annotations_path(root, split)) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes") / "small")
    summary = generate_shapes(root, seed=0, **SMALL)
    return root, summary


def test_class_names_are_the_six_shapes_in_order():
    assert CLASS_NAMES == ("circle", "square", "triangle", "star", "ring", "cross")


def test_writes_exactly_the_images_and_the_two_coco_files(small_set):
    root, summary = small_set
    expected = {os.path.join("annotations", f"instances_{split}.json") for split in ("train", "val")}
    expected |= {os.path.join("train", "images", f"{i:06d}.jpg") for i in range(12)}
    expected |= {os.path.join("val", "images", f"{i:06d}.jpg") for i in range(4)}
    assert set(tree_bytes(root)) == expected
    assert summary["train"]["num_images"] == 12 and summary["val"]["num_images"] == 4
    assert summary["train"]["annotations"] == shapes.annotations_path(root, "train")
    assert not [name for name in os.listdir(os.path.dirname(root)) if name != "small"]  # no temp dir left over
    assert shapes_is_complete(root)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path, small_set):
    root, _ = small_set
    again = generate_shapes(str(tmp_path / "again"), seed=0, **SMALL)["output_dir"]
    other = generate_shapes(str(tmp_path / "other"), seed=1, **SMALL)["output_dir"]
    first, second, third = tree_bytes(root), tree_bytes(again), tree_bytes(other)
    assert first == second
    assert set(first) == set(third)
    differing = [name for name in first if first[name] != third[name]]
    assert len(differing) == len(first)  # every image and both JSON files


def test_worker_count_does_not_change_the_bytes(tmp_path, small_set):
    root, _ = small_set
    parallel = generate_shapes(str(tmp_path / "parallel"), seed=0, workers=2, **SMALL)["output_dir"]
    assert tree_bytes(parallel) == tree_bytes(root)


def test_pycocotools_loads_both_splits_and_boxes_lie_in_their_images(small_set):
    from pycocotools.coco import COCO

    root, summary = small_set
    for split, count in (("train", 12), ("val", 4)):
        coco = COCO(shapes.annotations_path(root, split))
        assert len(coco.getImgIds()) == count
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASS_NAMES)
        assert all(c["supercategory"] == "shape" for c in coco.loadCats(coco.getCatIds()))
        assert len(coco.getAnnIds()) == summary[split]["num_objects"] > 0
        for image in coco.loadImgs(coco.getImgIds()):
            with Image.open(os.path.join(shapes.images_dir(root, split), image["file_name"])) as pixels:
                assert pixels.format == "JPEG" and pixels.mode == "RGB"
                assert pixels.size == (image["width"], image["height"]) == (96, 96)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0
                assert x + w <= image["width"] and y + h <= image["height"]
                assert 0 < ann["area"] <= w * h
                assert ann["iscrowd"] == 0 and 1 <= ann["category_id"] <= 6


def test_non_square_images_have_the_requested_size(tmp_path):
    root = generate_shapes(str(tmp_path / "wide"), seed=3, num_train=3, num_val=1, image_size=(64, 112))["output_dir"]
    coco = load(root, "train")
    for image in coco["images"]:
        assert (image["height"], image["width"]) == (64, 112)
        with Image.open(os.path.join(shapes.images_dir(root, "train"), image["file_name"])) as pixels:
            assert pixels.size == (112, 64)
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x + w <= 112 and y + h <= 64


def test_render_sample_is_what_the_jpeg_holds(small_set):
    root, _ = small_set
    pixels, objects = shapes.render_sample(0, "val", 2, (96, 96))
    coco = load(root, "val")
    assert [a["bbox"] for a in coco["annotations"] if a["image_id"] == 3] == [o["bbox"] for o in objects]
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, "JPEG", quality=90)
    with open(os.path.join(shapes.images_dir(root, "val"), "000002.jpg"), "rb") as handle:
        assert handle.read() == encoded.getvalue()


def sample_objects(count, size=(96, 96), split="train", seed=0):
    return [shapes.render_sample(seed, split, index, size)[1] for index in range(count)]


def test_every_class_appears_in_sixty_images_roughly_balanced():
    objects = [o for image in sample_objects(60) for o in image]
    counts = np.bincount([o["category_id"] for o in objects], minlength=7)[1:]
    assert (counts > 0).all(), counts
    assert counts.min() >= 0.4 * counts.mean()  # roughly balanced


def test_colours_are_random_per_object_not_per_class():
    hues = {}
    for index in range(40):
        rng = shapes.sample_rng(0, "train", index)
        pixels, objects = shapes.render_image(rng, 96, 96, plain=True, num_objects=1)
        if not objects:
            continue
        x, y, w, h = objects[0]["bbox"]
        centre = pixels[y + h // 2 - 1:y + h // 2 + 2, x + w // 2 - 1:x + w // 2 + 2].reshape(-1, 3)
        hues.setdefault(objects[0]["category_id"], []).append(centre.mean(axis=0))
    spreads = [np.std(np.array(colours), axis=0).mean() for colours in hues.values() if len(colours) >= 3]
    assert spreads and min(spreads) > 30  # uniform random channels have a standard deviation of about 74


def test_sizes_counts_and_overlaps_stay_in_range():
    sample = sample_objects(120, size=(128, 128))
    assert max(len(image) for image in sample) <= 6
    sides = [max(o["bbox"][2:]) / 128 for image in sample for o in image]
    assert 0.06 <= min(sides) < 0.15 and 0.4 < max(sides) <= 0.65
    for image in sample:
        for i, a in enumerate(image):
            for b in image[i + 1:]:
                assert iou(a["bbox"], b["bbox"]) <= 0.45  # placements overlapping more than 0.4 are rejected


def iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    return ix * iy / (aw * ah + bw * bh - ix * iy)


def test_negatives_exist_in_a_large_sample():
    sample = sample_objects(400, size=(48, 48))
    negatives = sum(1 for image in sample if not image)
    assert 3 <= negatives <= 30  # about 3 %


def differing(pixels):
    return (pixels != pixels[0, 0]).any(axis=-1)  # pixel (0, 0) is background: shapes keep off the border


@pytest.mark.parametrize("category_id", range(1, 7))
def test_a_single_shape_is_antialiased_and_its_box_is_exactly_the_box_of_its_pixels(category_id):
    checked = 0
    for index in range(200):
        rng = shapes.sample_rng(7, "train", index)
        pixels, objects = shapes.render_image(rng, 80, 80, plain=True, num_objects=1)
        if objects[0]["category_id"] != category_id:
            continue
        ys, xs = np.nonzero(differing(pixels))
        assert objects[0]["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3  # antialiased edges: partly covered pixels
        checked += 1
    assert checked >= 10


def test_with_overlaps_every_box_edge_touches_the_shapes_and_all_shapes_are_boxed():
    for index in range(60):
        pixels, objects = shapes.render_image(shapes.sample_rng(9, "val", index), 96, 96, plain=True, num_objects=6)
        drawn = differing(pixels)
        boxed = np.zeros_like(drawn)
        for o in objects:
            x, y, w, h = o["bbox"]
            boxed[y:y + h, x:x + w] = True
            inside = drawn[y:y + h, x:x + w]
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (drawn & ~boxed).any()  # nothing drawn outside the boxes


def test_generation_is_complete_only_after_the_final_rename(tmp_path, monkeypatch):
    target = str(tmp_path / "broken")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shapes, "_coco", fail)  # dies after the images, before the annotations
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(target, seed=0, num_train=2, num_val=1, image_size=(48, 48))
    assert not os.path.exists(target) and not shapes_is_complete(target)
    assert os.listdir(tmp_path) == []  # the temporary directory was removed too


def test_is_complete_rejects_missing_images_and_other_versions(tmp_path):
    root = generate_shapes(str(tmp_path / "d"), seed=0, num_train=2, num_val=1, image_size=(48, 48))["output_dir"]
    assert shapes_is_complete(root)
    os.remove(os.path.join(shapes.images_dir(root, "val"), "000000.jpg"))
    assert not shapes_is_complete(root)
    root = generate_shapes(root, seed=0, num_train=2, num_val=1, image_size=(48, 48))["output_dir"]  # replaces
    assert shapes_is_complete(root)
    coco = load(root, "train")
    coco["info"]["version"] = shapes.GENERATOR_VERSION - 1
    with open(shapes.annotations_path(root, "train"), "w") as handle:
        json.dump(coco, handle)
    assert not shapes_is_complete(root)
    assert not shapes_is_complete(str(tmp_path / "missing"))


def test_ensure_shapes_generates_once_and_reuses_the_cache(tmp_path):
    path = ensure_shapes(str(tmp_path), seed=2, num_train=3, num_val=2, image_size=(48, 48))
    assert os.path.basename(path) == "shapes-s2-3x2-48x48"
    assert shapes_is_complete(path) and len(load(path, "val")["images"]) == 2
    stamps = {name: os.stat(os.path.join(path, name)).st_mtime_ns for name in tree_bytes(path)}
    os.utime(shapes.annotations_path(path, "train"), ns=(1, 1))  # a regeneration would rewrite it
    stamps[os.path.join("annotations", "instances_train.json")] = 1
    assert ensure_shapes(str(tmp_path), seed=2, num_train=3, num_val=2, image_size=(48, 48)) == path
    assert {name: os.stat(os.path.join(path, name)).st_mtime_ns for name in tree_bytes(path)} == stamps
    other = ensure_shapes(str(tmp_path), seed=2, num_train=3, num_val=2, image_size=48)
    assert other == path  # an int size is square
    assert os.path.basename(ensure_shapes(str(tmp_path), seed=3, num_train=3, num_val=2,
                                          image_size=(48, 48))) == "shapes-s3-3x2-48x48"


def test_ensure_shapes_ignores_a_partial_temp_dir_and_regenerates_an_incomplete_cache(tmp_path):
    key = shapes.shapes_key(0, 3, 1, (48, 48))
    assert key == "shapes-s0-3x1-48x48"
    # What a generation killed on this host leaves behind: a temp dir of a dead process, half written.
    stale = tmp_path / f"{shapes._temp_prefix(key)}999999999-deadbeef"
    (stale / "train" / "images").mkdir(parents=True)
    (stale / "train" / "images" / "000000.jpg").write_bytes(b"partial")
    # And a cache dir missing its val annotations.
    broken = tmp_path / key
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "instances_train.json").write_text("{}")
    path = ensure_shapes(str(tmp_path), seed=0, num_train=3, num_val=1, image_size=(48, 48))
    assert path == str(broken)
    assert shapes_is_complete(path)
    assert len(load(path, "train")["images"]) == 3
    assert not stale.exists()  # cleaned up, its process being gone
    assert sorted(os.listdir(tmp_path)) == [key]


def test_ensure_shapes_regenerates_a_cache_made_with_other_settings(tmp_path):
    key_dir = tmp_path / shapes.shapes_key(0, 2, 1, (48, 48))
    generate_shapes(str(key_dir), seed=5, num_train=2, num_val=1, image_size=(48, 48))  # wrong seed for the key
    path = ensure_shapes(str(tmp_path), seed=0, num_train=2, num_val=1, image_size=(48, 48))
    assert load(path, "train")["info"]["seed"] == 0
    assert tree_bytes(path) == tree_bytes(generate_shapes(str(tmp_path / "fresh"), seed=0, num_train=2, num_val=1,
                                                          image_size=(48, 48))["output_dir"])
