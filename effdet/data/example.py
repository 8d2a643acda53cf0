"""The tf.Example format of detection records: the TensorFlow Object Detection API keys that Google automl
reads and writes, so that records made by either project read in the other."""
import hashlib
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np
import tensorflow as tf

ENCODED = "image/encoded"
FORMAT = "image/format"
SOURCE_ID = "image/source_id"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
KEY_SHA256 = "image/key/sha256"
XMIN, YMIN = "image/object/bbox/xmin", "image/object/bbox/ymin"
XMAX, YMAX = "image/object/bbox/xmax", "image/object/bbox/ymax"
LABEL = "image/object/class/label"
TEXT = "image/object/class/text"
IS_CROWD = "image/object/is_crowd"
AREA = "image/object/area"
CAPTION = "image/caption"

LABEL_MAP_FILE = "label_map.json"  # next to the shards: {"1": "person", ...}
SUMMARY_FILE = "summary.json"  # "<prefix basename>.summary.json" next to the shards: what was kept, fixed, dropped


@dataclass
class DetectionRecord:
    """One image and its objects. Boxes are normalised to [0, 1] as (ymin, xmin, ymax, xmax)."""

    encoded_jpeg: bytes
    source_id: str
    height: int
    width: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros([0, 4], np.float32))
    labels: Sequence[int] = ()
    texts: Sequence[str] = ()
    is_crowd: Sequence[int] = ()
    areas: Sequence[float] = ()  # in pixels of the original image
    filename: str = ""
    captions: List[str] = field(default_factory=list)


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))


def to_example(record: DetectionRecord) -> tf.train.Example:
    boxes = np.asarray(record.boxes, np.float32).reshape(-1, 4)
    features = {
        ENCODED: _bytes([record.encoded_jpeg]),
        FORMAT: _bytes([b"jpeg"]),
        SOURCE_ID: _bytes([str(record.source_id).encode()]),
        FILENAME: _bytes([record.filename.encode()]),
        KEY_SHA256: _bytes([hashlib.sha256(record.encoded_jpeg).hexdigest().encode()]),
        HEIGHT: _ints([record.height]),
        WIDTH: _ints([record.width]),
        YMIN: _floats(boxes[:, 0]),
        XMIN: _floats(boxes[:, 1]),
        YMAX: _floats(boxes[:, 2]),
        XMAX: _floats(boxes[:, 3]),
        LABEL: _ints(record.labels),
        TEXT: _bytes([t.encode() for t in record.texts]),
        IS_CROWD: _ints(record.is_crowd if len(record.is_crowd) else [0] * len(boxes)),
        AREA: _floats(record.areas),
    }
    if record.captions:
        features[CAPTION] = _bytes([c.encode() for c in record.captions])
    return tf.train.Example(features=tf.train.Features(feature=features))


# What the reader needs; everything else in a record (filename, sha256, captions) is ignored by training.
PARSE_SPEC = {
    ENCODED: tf.io.FixedLenFeature((), tf.string),
    SOURCE_ID: tf.io.FixedLenFeature((), tf.string, default_value=""),
    HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=-1),
    XMIN: tf.io.VarLenFeature(tf.float32),
    YMIN: tf.io.VarLenFeature(tf.float32),
    XMAX: tf.io.VarLenFeature(tf.float32),
    YMAX: tf.io.VarLenFeature(tf.float32),
    LABEL: tf.io.VarLenFeature(tf.int64),
    IS_CROWD: tf.io.VarLenFeature(tf.int64),
    AREA: tf.io.VarLenFeature(tf.float32),
}


def parse_fields(serialized: tf.Tensor) -> dict:
    """One serialized record → its encoded image and objects, undecoded (the pipeline decodes only what it
    crops). Boxes are normalised [N, 4] (ymin, xmin, ymax, xmax); height/width are -1 when not stored."""
    parsed = tf.io.parse_single_example(serialized, PARSE_SPEC)
    dense = {k: tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v for k, v in parsed.items()}
    boxes = tf.stack([dense[YMIN], dense[XMIN], dense[YMAX], dense[XMAX]], axis=-1)
    num = tf.shape(boxes)[0]
    is_crowd = dense[IS_CROWD]
    is_crowd = tf.cond(tf.shape(is_crowd)[0] == num, lambda: is_crowd, lambda: tf.zeros([num], tf.int64))
    areas = dense[AREA]
    areas = tf.cond(tf.shape(areas)[0] == num, lambda: areas, lambda: tf.zeros([num], tf.float32))
    return {
        "encoded": dense[ENCODED],
        "source_id": dense[SOURCE_ID],
        "height": dense[HEIGHT],
        "width": dense[WIDTH],
        "boxes": boxes,
        "classes": tf.cast(dense[LABEL], tf.int32),
        "is_crowd": tf.cast(is_crowd, tf.bool),
        "areas": areas,
    }


def parse(serialized: tf.Tensor) -> dict:
    """One serialized record → {image (uint8 HxWx3), source_id, boxes [N,4] normalised, classes, is_crowd, areas}."""
    fields = parse_fields(serialized)
    fields["image"] = tf.io.decode_image(fields.pop("encoded"), channels=3, expand_animations=False)
    del fields["height"], fields["width"]
    return fields
