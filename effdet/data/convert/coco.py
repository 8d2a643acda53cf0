"""COCO-format detection datasets → sharded tf.Example records.

Any dataset in COCO's "instances" format converts:
  images       [{"id": int or str, "file_name": str, "width"?: int, "height"?: int}, ...]
  annotations  [{"image_id": ..., "category_id": int, "bbox": [x, y, w, h] in pixels, "iscrowd"?: 0/1,
                 "area"?: number}, ...]
  categories   [{"id": int >= 0, "name": str}, ...]
Category ids are written as they are (COCO's sparse 1..90 included). A file that does not have this shape fails
at once (ConversionError); dirty items inside a well-formed file are dropped or fixed and counted instead.
"""
import json
import math
import os
from collections import Counter
from typing import Dict, List, Mapping, Optional, Tuple

from . import summary as S
from .errors import ConversionError
from .images import MISSING_FILE, UNREADABLE
from .task import ImageTask

IMAGE_DROP_REASONS = (MISSING_FILE, UNREADABLE, S.DUPLICATE_ID)
OBJECT_DROP_REASONS = (S.UNKNOWN_IMAGE, S.UNKNOWN_CATEGORY, S.MALFORMED, S.NON_POSITIVE_SIZE, S.IMAGE_DROPPED,
                       S.OUTSIDE_IMAGE)


def convert_coco(image_dir: str, annotations_file: str, output_prefix: str, num_shards: int,
                 num_workers: Optional[int] = None, caption_file: Optional[str] = None,
                 progress: bool = True) -> dict:
    """Converts a COCO-format dataset; returns the summary (also written as `<prefix basename>.summary.json`).

    num_workers: processes that read the images (default min(CPUs, 8)); the output does not depend on it.
    caption_file: a COCO captions file; its captions go into `image/caption`."""
    if not os.path.isdir(image_dir):
        raise ConversionError(str(image_dir), "image directory not found")
    tasks, label_map, counts = read_coco(image_dir, annotations_file)
    if caption_file is not None:
        counts.update(add_captions(tasks, caption_file))
    from . import writer  # imports TensorFlow: only once the inputs are known to be usable

    return writer.write_dataset(
        tasks, output_prefix, num_shards, num_workers, label_map, counts, progress=progress, dataset="coco",
        source=str(annotations_file), image_reasons=IMAGE_DROP_REASONS, object_reasons=OBJECT_DROP_REASONS,
        captions=caption_file is not None)


def read_coco(image_dir: str, annotations_file: str) -> Tuple[List[ImageTask], Dict[int, str], Counter]:
    """The images sorted by id, each with its usable boxes; the label map; the counts of what was dropped."""
    data = read_json(annotations_file, required=("images", "annotations", "categories"))
    check = _Checker(annotations_file)
    label_map = _label_map(data["categories"], check)
    counts = Counter()
    tasks: Dict[object, ImageTask] = {}
    for index, image in enumerate(data["images"]):
        where = f"images[{index}]"
        check.object(image, where)
        image_id = check.image_id(image, "id", where)
        file_name = check.field(image, "file_name", str, "a string", where)
        width, height = (check.optional_number(image, key, where) for key in ("width", "height"))
        counts[S.IMAGES_LISTED] += 1
        if image_id in tasks:
            counts[S.image_dropped(S.DUPLICATE_ID)] += 1
            continue
        tasks[image_id] = ImageTask(source_id=str(image_id), path=os.path.join(image_dir, file_name),
                                    filename=file_name, width=_whole(width), height=_whole(height))
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        check.object(annotation, where)
        image_id = check.image_id(annotation, "image_id", where)
        category = check.field(annotation, "category_id", int, "an integer", where)
        bbox = check.field(annotation, "bbox", list, "a list [x, y, width, height]", where)
        if len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise ConversionError(str(annotations_file), f"{where}: 'bbox' must be 4 numbers [x, y, width, height]")
        crowd = check.optional_number(annotation, "iscrowd", where)
        area = check.optional_number(annotation, "area", where)
        counts[S.OBJECTS_LISTED] += 1
        reason = _drop_reason(image_id in tasks, category in label_map, bbox)
        if reason:
            counts[S.object_dropped(reason)] += 1
            continue
        x, y, w, h = bbox
        area = area if area is not None and math.isfinite(area) and area >= 0 else None
        tasks[image_id].add_object((x, y, x + w, y + h), category, label_map[category], int(bool(crowd)), area)
    return [tasks[key] for key in sorted(tasks, key=_id_order)], label_map, counts


def add_captions(tasks: List[ImageTask], caption_file: str) -> Counter:
    """Adds each caption of a COCO captions file to its image, in file order; counts those of unknown images."""
    data = read_json(caption_file, required=("annotations",))
    check = _Checker(caption_file)
    by_id = {task.source_id: task for task in tasks}
    counts = Counter()
    for index, annotation in enumerate(data["annotations"]):
        where = f"annotations[{index}]"
        check.object(annotation, where)
        image_id = check.image_id(annotation, "image_id", where)
        caption = check.field(annotation, "caption", str, "a string", where)
        task = by_id.get(str(image_id))
        if task is None:
            counts[S.CAPTIONS_UNKNOWN_IMAGE] += 1
        else:
            task.captions.append(caption)
    return counts


def read_json(path: str, required=()) -> dict:
    """A JSON object with lists under `required`, or a ConversionError naming the file."""
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConversionError(str(path), "file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(str(path), f"cannot read: {error}") from None
    except json.JSONDecodeError as error:
        raise ConversionError(str(path), f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ConversionError(str(path), f"must hold a JSON object, not {_type(data)}")
    for key in required:
        if key not in data:
            raise ConversionError(str(path), f"missing '{key}' (needs {', '.join(repr(k) for k in required)})")
        if not isinstance(data[key], list):
            raise ConversionError(str(path), f"'{key}' must be a list, not {_type(data[key])}")
    return data


def _label_map(categories: list, check: "_Checker") -> Dict[int, str]:
    label_map = {}
    for index, category in enumerate(categories):
        where = f"categories[{index}]"
        check.object(category, where)
        label = check.field(category, "id", int, "an integer", where)
        name = check.field(category, "name", str, "a string", where)
        if label < 0:
            check.fail(f"{where}: 'id' must be >= 0, got {label}")
        if label in label_map:
            check.fail(f"{where}: duplicate category id {label}")
        label_map[label] = name
    return label_map


def _drop_reason(known_image: bool, known_category: bool, bbox: list) -> Optional[str]:
    if not known_image:
        return S.UNKNOWN_IMAGE
    if not known_category:
        return S.UNKNOWN_CATEGORY
    if not all(math.isfinite(v) for v in bbox):
        return S.MALFORMED
    if bbox[2] <= 0 or bbox[3] <= 0:
        return S.NON_POSITIVE_SIZE
    return None


class _Checker:
    """Type checks of one annotation file's items; failures name the file and the item."""

    def __init__(self, path: str):
        self.path = str(path)

    def fail(self, reason: str):
        raise ConversionError(self.path, reason)

    def object(self, value, where: str):
        if not isinstance(value, dict):
            self.fail(f"{where} must be a JSON object, not {_type(value)}")

    def field(self, item: Mapping, key: str, kind: type, description: str, where: str):
        value = item.get(key)
        if key not in item:
            self.fail(f"{where}: missing '{key}'")
        if not isinstance(value, kind) or isinstance(value, bool):
            self.fail(f"{where}: '{key}' must be {description}, not {_type(value)}")
        return value

    def image_id(self, item: Mapping, key: str, where: str):
        return self.field(item, key, (int, str), "an integer or a string", where)

    def optional_number(self, item: Mapping, key: str, where: str):
        value = item.get(key)
        if value is None:
            return None
        if not _is_number(value) and not isinstance(value, bool):
            self.fail(f"{where}: '{key}' must be a number, not {_type(value)}")
        return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _whole(value) -> Optional[int]:
    """An image size from the annotation file, when it is a usable one."""
    return int(value) if value is not None and math.isfinite(value) and value >= 1 and value == int(value) else None


def _id_order(image_id):
    return (isinstance(image_id, str), image_id)


def _type(value) -> str:
    return "null" if value is None else type(value).__name__
