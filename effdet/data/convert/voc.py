"""Pascal VOC-format datasets → sharded tf.Example records.

Layout: <data_dir>/ImageSets/Main/<set>.txt lists image ids; <data_dir>/Annotations/<id>.xml holds each image's
size and objects (name, difficult, bndbox xmin/ymin/xmax/ymax in pixels); <data_dir>/JPEGImages/<id>.jpg is the
image (or the XML's <filename> when there is no such file). The 20 VOC classes get ids 1..20 in their standard
(alphabetical) order unless a label map {"<id>": "<name>"} is given. `difficult` objects are kept with
is_crowd=1, so training ignores them as it ignores crowd boxes. A missing or broken XML file drops its image.
"""
import json
import math
import os
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from typing import Dict, List, Mapping, Optional, Tuple, Union

from . import summary as S
from .errors import ConversionError
from .images import MISSING_FILE, UNREADABLE
from .task import ImageTask

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
IMAGE_DROP_REASONS = (MISSING_FILE, UNREADABLE, S.MISSING_ANNOTATION, S.BAD_ANNOTATION)
OBJECT_DROP_REASONS = (S.UNKNOWN_CATEGORY, S.MALFORMED, S.NON_POSITIVE_SIZE, S.IMAGE_DROPPED, S.OUTSIDE_IMAGE)
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def default_label_map() -> Dict[int, str]:
    return {index + 1: name for index, name in enumerate(VOC_CLASSES)}


def convert_voc(data_dir: str, split: str, output_prefix: str, num_shards: int, num_workers: Optional[int] = None,
                label_map: Union[None, str, Mapping[int, str]] = None, progress: bool = True) -> dict:
    """Converts the images of ImageSets/Main/<split>.txt; returns the summary (also written as JSON).

    label_map: None for the 20 VOC classes, a {id: name} mapping, or the path of a JSON file {"<id>": "<name>"}."""
    if label_map is None:
        label_map = default_label_map()
    elif isinstance(label_map, (str, os.PathLike)):
        label_map = load_label_map(label_map)
    else:
        label_map = _checked_label_map(dict(label_map), "label_map")
    tasks, counts = read_voc(data_dir, split, label_map)
    from . import writer  # imports TensorFlow: only once the inputs are known to be usable

    return writer.write_dataset(
        tasks, output_prefix, num_shards, num_workers, label_map, counts, progress=progress, dataset="voc",
        source=os.path.join(str(data_dir), "ImageSets", "Main", f"{split}.txt"), image_reasons=IMAGE_DROP_REASONS,
        object_reasons=OBJECT_DROP_REASONS)


def read_voc(data_dir: str, split: str, label_map: Mapping[int, str]) -> Tuple[List[ImageTask], Counter]:
    """The images of the set sorted by id, each with its usable boxes, and the counts of what was dropped."""
    ids = sorted(read_image_set(data_dir, split))
    labels = {name: label for label, name in label_map.items()}
    counts = Counter({S.IMAGES_LISTED: len(ids)})
    tasks = []
    for image_id, source_id in zip(ids, _source_ids(ids)):
        xml_path = os.path.join(data_dir, "Annotations", f"{image_id}.xml")
        try:
            root = ElementTree.parse(xml_path).getroot()
        except FileNotFoundError:
            counts[S.image_dropped(S.MISSING_ANNOTATION)] += 1
            continue
        except (ElementTree.ParseError, OSError):
            counts[S.image_dropped(S.BAD_ANNOTATION)] += 1
            continue
        filename = f"{image_id}.jpg"
        if not os.path.exists(os.path.join(data_dir, "JPEGImages", filename)):
            filename = (root.findtext("filename") or "").strip() or filename
        size = root.find("size")
        task = ImageTask(source_id=source_id, path=os.path.join(data_dir, "JPEGImages", filename),
                         filename=filename, width=_whole(size, "width"), height=_whole(size, "height"))
        for element in root.findall("object"):
            counts[S.OBJECTS_LISTED] += 1
            name = (element.findtext("name") or "").strip()
            box = _box(element.find("bndbox"))
            if name not in labels:
                reason = S.UNKNOWN_CATEGORY
            elif box is None:
                reason = S.MALFORMED
            elif box[2] <= box[0] or box[3] <= box[1]:
                reason = S.NON_POSITIVE_SIZE
            else:
                reason = None
            if reason:
                counts[S.object_dropped(reason)] += 1
                continue
            difficult = (element.findtext("difficult") or "0").strip() not in ("0", "", "false", "False")
            task.add_object(box, labels[name], name, is_crowd=int(difficult))
        tasks.append(task)
    return tasks, counts


def read_image_set(data_dir: str, split: str) -> List[str]:
    if not os.path.isdir(data_dir):
        raise ConversionError(str(data_dir), "VOC directory not found")
    main = os.path.join(data_dir, "ImageSets", "Main")
    path = os.path.join(main, f"{split}.txt")
    try:
        with open(path) as handle:
            return [line.split()[0] for line in handle if line.strip()]
    except FileNotFoundError:
        sets = sorted(n[:-4] for n in os.listdir(main) if n.endswith(".txt") and "_" not in n) \
            if os.path.isdir(main) else []
        raise ConversionError(path, f"image set not found (sets here: {', '.join(sets) or 'none'})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(path, f"cannot read: {error}") from None


def load_label_map(path: str) -> Dict[int, str]:
    """A label map file {"<id>": "<name>"} (the format of label_map.json), checked."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ConversionError(str(path), "label map file not found") from None
    except (OSError, ValueError) as error:
        raise ConversionError(str(path), f"not a readable JSON label map ({error})") from None
    if not isinstance(data, dict):
        raise ConversionError(str(path), 'a label map must be a JSON object {"<id>": "<name>"}')
    return _checked_label_map(data, str(path))


def _checked_label_map(data: dict, where: str) -> Dict[int, str]:
    label_map = {}
    for key, name in data.items():
        try:
            label = int(key)
        except (TypeError, ValueError):
            raise ConversionError(where, f"label map key {key!r} is not an integer id") from None
        if isinstance(key, bool) or label < 0 or str(label) != str(key).strip():
            raise ConversionError(where, f"label map key {key!r} is not a non-negative integer id")
        if not isinstance(name, str) or not name.strip():
            raise ConversionError(where, f"label map name for id {label} must be a non-empty string")
        if label in label_map:
            raise ConversionError(where, f"duplicate label map id {label}")
        label_map[label] = name.strip()
    if len(set(label_map.values())) != len(label_map):
        raise ConversionError(where, "label map names must be unique")
    if not label_map:
        raise ConversionError(where, "label map is empty")
    return label_map


def _source_ids(ids: List[str]) -> List[str]:
    """Numeric source ids (evaluation reads them as integers): the digits of each VOC id (2008_000123 →
    2008000123) when that keeps them distinct, else 1, 2, 3... in sorted order."""
    digits = [re.sub(r"\D", "", image_id) for image_id in ids]
    if all(digits) and len({int(d) for d in digits}) == len(ids):
        return [str(int(d)) for d in digits]
    return [str(index + 1) for index in range(len(ids))]


def _box(element) -> Optional[Tuple[float, float, float, float]]:
    if element is None:
        return None
    try:
        box = tuple(float(element.findtext(corner)) for corner in _CORNERS)
    except (TypeError, ValueError):
        return None
    return box if all(math.isfinite(v) for v in box) else None


def _whole(size, key: str) -> Optional[int]:
    try:
        value = float(size.findtext(key))
    except (AttributeError, TypeError, ValueError):
        return None
    return int(value) if math.isfinite(value) and value >= 1 and value == int(value) else None
