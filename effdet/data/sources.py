"""Data sources (conf/data/*.yaml, registry key `data.kind`): each turns a data config into the files to
read, their label map and their size."""
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import tensorflow as tf

from effdet.data.example import LABEL_MAP_FILE
from effdet.data.pipeline import list_files
from effdet.errors import ConfigError, DataError
from effdet.registry import Registry

DATASETS = Registry("dataset kind")


@dataclass
class DataSource:
    name: str
    num_classes: int
    train_file_pattern: Optional[str] = None
    val_file_pattern: Optional[str] = None
    val_json_file: Optional[str] = None  # COCO-format ground truth of the val split, for COCO metrics
    label_map: Dict[int, str] = field(default_factory=dict)  # dataset class id (1..) → name
    num_train_examples: Optional[int] = None
    fake: bool = False

    def class_name(self, class_id: int) -> str:
        return self.label_map.get(int(class_id), f"class_{int(class_id)}")


def build_source(data_cfg: Any) -> DataSource:
    source = DATASETS.get(data_cfg.kind, where="data.kind")(data_cfg)
    check_labels(source)
    return source


def check_labels(source: DataSource) -> None:
    too_large = {i: n for i, n in source.label_map.items() if not 1 <= i <= source.num_classes}
    if too_large:
        listed = ", ".join(f"{i} ({n})" for i, n in sorted(too_large.items())[:5])
        raise DataError(f"the label map of data '{source.name}' has class ids outside 1..{source.num_classes} "
                        f"(data.num_classes): {listed}. Set data.num_classes to at least {max(too_large)}.")


def read_label_map(path: Optional[str], next_to_pattern: Optional[str]) -> Dict[int, str]:
    """The converter's label_map.json ({"1": "person", ...}); given, or found next to the shards."""
    if not path and next_to_pattern:
        candidate = os.path.join(os.path.dirname(os.path.expanduser(next_to_pattern)), LABEL_MAP_FILE)
        path = candidate if tf.io.gfile.exists(candidate) else None
    if not path:
        return {}
    try:
        with tf.io.gfile.GFile(path) as handle:
            return {int(k): str(v) for k, v in json.load(handle).items()}
    except (OSError, ValueError, AttributeError) as error:
        raise DataError(f"cannot read the label map {path}: {error}") from None


def count_records(file_pattern: str, split: str = "train") -> int:
    """The good records of the shards; bad ones are left out, with a warning naming each damaged shard."""
    from effdet.data.reader import CorruptRecords, ShardReader

    tally = CorruptRecords(split)
    return sum(1 for path in list_files(file_pattern) for _ in ShardReader(path, tally))


@DATASETS.register("tfrecord")
def tfrecord_source(data_cfg: Any) -> DataSource:
    """TFRecord shards made by `python -m effdet.data.convert` or by automl's converters."""
    source = DataSource(
        name=data_cfg.name, num_classes=data_cfg.num_classes,
        train_file_pattern=data_cfg.train_file_pattern, val_file_pattern=data_cfg.val_file_pattern,
        val_json_file=data_cfg.val_json_file,
        label_map=read_label_map(data_cfg.label_map_file, data_cfg.train_file_pattern or data_cfg.val_file_pattern),
        num_train_examples=data_cfg.num_examples_per_epoch,
    )
    if source.train_file_pattern and source.num_train_examples is None:
        source.num_train_examples = count_records(source.train_file_pattern)
    return source


@DATASETS.register("fake")
def fake_source(data_cfg: Any) -> DataSource:
    """Random batches: there are no shards to count, so the data config says how many make an epoch."""
    if not data_cfg.num_examples_per_epoch:
        raise ConfigError(f"data '{data_cfg.name}' (kind fake) has no shards to count: set "
                          f"data.num_examples_per_epoch, as conf/data/fake.yaml does")
    return DataSource(name=data_cfg.name, num_classes=data_cfg.num_classes, fake=True,
                      num_train_examples=data_cfg.num_examples_per_epoch)


@DATASETS.register("shapes")
def shapes_source(data_cfg: Any) -> DataSource:
    """The synthetic dataset that ships with the project: generated on first use into data.cache_dir (the
    same seed and sizes give the same images on every machine), then converted like any COCO dataset."""
    from effdet.data.shapes import CLASS_NAMES

    synthetic = data_cfg.synthetic
    root = prepare_shapes(os.path.expanduser(data_cfg.cache_dir), synthetic.seed, synthetic.num_train,
                          synthetic.num_val, synthetic.image_size, synthetic.num_shards)
    return DataSource(
        name=data_cfg.name, num_classes=data_cfg.num_classes,
        train_file_pattern=os.path.join(root, "tfrecord", "train-*.tfrecord"),
        val_file_pattern=os.path.join(root, "tfrecord", "val-*.tfrecord"),
        val_json_file=os.path.join(root, "annotations", "instances_val.json"),
        label_map={i + 1: name for i, name in enumerate(CLASS_NAMES)},
        num_train_examples=synthetic.num_train,
    )


def prepare_shapes(cache_dir: str, seed: int, num_train: int, num_val: int, image_size: int,
                   num_shards: int) -> str:
    """Generates and converts the shapes dataset once; concurrent workers wait for the first one."""
    import fcntl

    from effdet.data.convert.coco import convert_coco
    from effdet.data.shapes import annotations_path, ensure_shapes, images_dir

    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one generator per machine; the others then find it done
        root = ensure_shapes(cache_dir, seed=seed, num_train=num_train, num_val=num_val,
                             image_size=(image_size, image_size))
        records = os.path.join(root, "tfrecord")
        done = os.path.join(records, ".complete")
        if not os.path.exists(done):
            partial = records + ".partial"
            tf.io.gfile.rmtree(partial) if os.path.exists(partial) else None
            for split in ("train", "val"):
                convert_coco(images_dir(root, split), annotations_path(root, split),
                             os.path.join(partial, split), num_shards=num_shards)
            open(os.path.join(partial, ".complete"), "w").close()
            if os.path.exists(records):
                tf.io.gfile.rmtree(records)
            os.rename(partial, records)
    return root
