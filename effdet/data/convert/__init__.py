"""Dataset converters: COCO- and Pascal VOC-format datasets → sharded tf.Example records (`effdet.data.example`).

    from effdet.data.convert import convert_coco
    summary = convert_coco("train2017", "instances_train2017.json", "tfrecord/train", num_shards=32)

Command line: `python -m effdet.data.convert coco|voc ...` (see `__main__.py`). Importing this package does not
import TensorFlow; a conversion imports it once its inputs have been checked.
"""
from .coco import convert_coco
from .errors import ConversionError
from .voc import VOC_CLASSES, convert_voc

__all__ = ["convert_coco", "convert_voc", "ConversionError", "VOC_CLASSES"]
