import json

import pytest

from effdet.data.builder import build_input, build_labeler
from effdet.data.sources import DataSource, build_source, check_labels
from effdet.errors import ConfigError, DataError
from tests.conftest import compose
from tests.data.test_pipeline import rectangle_record, write_records


def test_a_label_map_with_ids_beyond_num_classes_is_refused():
    with pytest.raises(DataError, match=r"outside 1\.\.2.*7 \(boat\).*at least 7"):
        check_labels(DataSource("mine", 2, label_map={1: "cat", 7: "boat"}))


def test_tfrecord_source_reads_the_label_map_next_to_the_shards_and_counts_records(tmp_path):
    write_records(tmp_path / "train-00000-of-00001.tfrecord", [rectangle_record(i) for i in range(5)])
    (tmp_path / "label_map.json").write_text(json.dumps({"1": "rect"}))
    cfg = compose(["data=coco", f"data.train_file_pattern={tmp_path}/train-*", "data.val_file_pattern=null",
                   "data.num_examples_per_epoch=null", "data.num_classes=3"])
    source = build_source(cfg.data)
    assert source.label_map == {1: "rect"} and source.num_train_examples == 5
    assert source.class_name(1) == "rect" and source.class_name(2) == "class_2"
    with pytest.raises(ConfigError, match="data.val_file_pattern"):
        build_input(cfg.data, source, build_labeler(cfg.model), split="val")


def test_fake_data_without_an_epoch_size_is_refused_naming_the_key():
    cfg = compose(["data=fake", "data.num_examples_per_epoch=null"])
    with pytest.raises(ConfigError, match="set data.num_examples_per_epoch"):
        build_source(cfg.data)


def test_jitter_bounds_must_be_ordered(tmp_path):
    write_records(tmp_path / "train.tfrecord", [rectangle_record(0)])
    cfg = compose(["data=coco", f"data.train_file_pattern={tmp_path}/train*", "data.jitter_min=1.5",
                   "data.jitter_max=1.2"])
    with pytest.raises(ConfigError, match="jitter_min"):
        build_input(cfg.data, build_source(cfg.data), build_labeler(cfg.model))


def test_the_shapes_source_generates_converts_and_feeds_the_pipeline(tmp_path):
    cfg = compose(["data=shapes", f"data.cache_dir={tmp_path}", "data.synthetic.num_train=16",
                   "data.synthetic.num_val=4", "data.synthetic.image_size=96", "data.synthetic.num_shards=2",
                   "model.image_size=128"])
    source = build_source(cfg.data)
    assert source.num_classes == 6 and source.label_map[1] == "circle"
    images, targets = next(iter(build_input(cfg.data, source, build_labeler(cfg.model)).train(4)))
    assert images.shape == (4, 128, 128, 3)
    ids = [s for _, t in build_input(cfg.data, source, build_labeler(cfg.model), "val").eval(8)
           for s in t["source_id"].numpy()]
    assert len(ids) == 4
    # a second build reuses the cache instead of generating again
    records = sorted((tmp_path).rglob("*.tfrecord"))
    mtimes = [r.stat().st_mtime_ns for r in records]
    build_source(cfg.data)
    assert [r.stat().st_mtime_ns for r in sorted((tmp_path).rglob("*.tfrecord"))] == mtimes
