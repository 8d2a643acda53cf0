"""One image and its boxes in pixels → one serialized tf.Example, with counts of what was fixed or dropped.

`build_record` runs in the worker processes: it reads the image, clips the boxes to it, normalises them and
serializes the record deterministically (sorted feature keys), so the bytes never depend on the process.
"""
from collections import Counter
from typing import Optional, Tuple

import numpy as np

from effdet.data.example import DetectionRecord, to_example

from . import summary as S
from .images import ImageError, load_image
from .task import ImageTask


def build_record(task: ImageTask) -> Tuple[Optional[bytes], Counter]:
    """The serialized record of `task` (None when the image is dropped) and what happened, as summary counts."""
    counts = Counter()
    try:
        image = load_image(task.path)
    except ImageError as error:
        counts[S.image_dropped(error.reason)] += 1
        counts[S.object_dropped(S.IMAGE_DROPPED)] += len(task.boxes)
        return None, counts
    if image.converted:
        counts[S.converted(image.converted)] += 1
    width, height = image.width, image.height
    if _positive(task.width) and _positive(task.height):  # boxes are in the annotation file's pixels
        if (task.width, task.height) != (width, height):
            counts[S.SIZE_MISMATCH] += 1
        width, height = task.width, task.height

    boxes, keep, areas = [], [], []
    for index, (xmin, ymin, xmax, ymax) in enumerate(task.boxes):
        clipped = (max(xmin, 0.0), max(ymin, 0.0), min(xmax, float(width)), min(ymax, float(height)))
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            counts[S.object_dropped(S.OUTSIDE_IMAGE)] += 1
            continue
        if clipped != (xmin, ymin, xmax, ymax):
            counts[S.CLIPPED] += 1
        x0, y0, x1, y1 = clipped
        boxes.append((y0 / height, x0 / width, y1 / height, x1 / width))
        area = task.areas[index]
        areas.append((x1 - x0) * (y1 - y0) if area is None else area)
        keep.append(index)

    labels = [task.labels[i] for i in keep]
    is_crowd = [task.is_crowd[i] for i in keep]
    counts[S.IMAGES_WRITTEN] += 1
    counts[S.NEGATIVES] += int(not keep)
    counts[S.OBJECTS_WRITTEN] += len(keep)
    counts[S.CROWD] += sum(is_crowd)
    counts[S.CAPTIONS_WRITTEN] += len(task.captions)
    for label in labels:
        counts[S.per_class(label)] += 1
    record = DetectionRecord(
        encoded_jpeg=image.jpeg, source_id=task.source_id, height=image.height, width=image.width,
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=labels, texts=[task.texts[i] for i in keep],
        is_crowd=is_crowd, areas=areas, filename=task.filename, captions=list(task.captions))
    return to_example(record).SerializeToString(deterministic=True), counts


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
