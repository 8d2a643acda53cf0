"""What a conversion kept, fixed and dropped: the counting keys, the summary dict, and its table.

Workers return flat Counters keyed by the names below; `build_summary` nests them into the JSON written as
`<prefix basename>.summary.json`. Every object listed in the input is counted exactly once, as written or
under the first drop reason that applies, so `listed == written + sum(dropped)` for images and for objects.
"""
from collections import Counter
from typing import Iterable, List, Mapping, Tuple

IMAGES_LISTED = "images.listed"
IMAGES_WRITTEN = "images.written"
NEGATIVES = "images.negatives"  # written with no objects left
SIZE_MISMATCH = "images.size_mismatch"  # the annotation file gives another size than the image has
OBJECTS_LISTED = "objects.listed"
OBJECTS_WRITTEN = "objects.written"
CROWD = "objects.crowd"  # written with is_crowd=1 (COCO iscrowd, VOC difficult)
CLIPPED = "objects.clipped"  # written after clipping to the image
CAPTIONS_WRITTEN = "captions.written"
CAPTIONS_UNKNOWN_IMAGE = "captions.unknown_image"

# Why an image was dropped, besides images.MISSING_FILE and images.UNREADABLE.
DUPLICATE_ID = "duplicate_id"  # COCO: a second image entry with an id already seen
MISSING_ANNOTATION = "missing_annotation"  # VOC: no Annotations/<id>.xml
BAD_ANNOTATION = "bad_annotation"  # VOC: an XML file that does not parse

# Why an object was dropped, in the order they are checked.
UNKNOWN_IMAGE = "unknown_image"  # COCO: its image_id is not in 'images'
UNKNOWN_CATEGORY = "unknown_category"  # its category is not in the categories / label map
MALFORMED = "malformed"  # non-finite or unreadable coordinates
NON_POSITIVE_SIZE = "non_positive_size"  # zero or negative width or height
IMAGE_DROPPED = "image_dropped"  # its image was dropped
OUTSIDE_IMAGE = "outside_image"  # nothing left after clipping to the image


def image_dropped(reason: str) -> str:
    return f"images.dropped.{reason}"


def object_dropped(reason: str) -> str:
    return f"objects.dropped.{reason}"


def converted(kind: str) -> str:
    return f"images.converted.{kind}"


def per_class(label: int) -> str:
    return f"objects.per_class.{label}"


def build_summary(counts: Counter, *, dataset: str, source: str, num_shards: int, label_map: Mapping[int, str],
                  image_reasons: Iterable[str], object_reasons: Iterable[str], captions: bool = False) -> dict:
    converted_prefix = converted("")
    summary = {
        "dataset": dataset,
        "source": source,
        "num_shards": num_shards,
        "images": {
            "listed": counts[IMAGES_LISTED],
            "written": counts[IMAGES_WRITTEN],
            "negatives": counts[NEGATIVES],
            "size_mismatch": counts[SIZE_MISMATCH],
            "dropped": {reason: counts[image_dropped(reason)] for reason in image_reasons},
            "converted": {key[len(converted_prefix):]: n for key, n in sorted(counts.items())
                          if key.startswith(converted_prefix) and n},
        },
        "objects": {
            "listed": counts[OBJECTS_LISTED],
            "written": counts[OBJECTS_WRITTEN],
            "crowd": counts[CROWD],
            "clipped": counts[CLIPPED],
            "dropped": {reason: counts[object_dropped(reason)] for reason in object_reasons},
            "per_class": {str(label): counts[per_class(label)] for label in sorted(label_map)},
        },
    }
    if captions:
        summary["captions"] = {"written": counts[CAPTIONS_WRITTEN], "unknown_image": counts[CAPTIONS_UNKNOWN_IMAGE]}
    return summary


def format_table(summary: dict) -> str:
    """The summary as an aligned two-column table for the terminal (per-class counts are in the JSON only)."""
    images, objects = summary["images"], summary["objects"]
    rows: List[Tuple[str, object]] = [("images listed", images["listed"]), ("  written", images["written"]),
                                      ("    negatives (no objects)", images["negatives"])]
    rows += [(f"    converted to RGB JPEG from {kind}", n) for kind, n in images["converted"].items()]
    rows += [("    size differs from annotation", images["size_mismatch"])]
    rows += [(f"  dropped: {_words(reason)}", n) for reason, n in images["dropped"].items()]
    rows += [("objects listed", objects["listed"]), ("  written", objects["written"]),
             ("    crowd", objects["crowd"]), ("    clipped to the image", objects["clipped"])]
    rows += [(f"  dropped: {_words(reason)}", n) for reason, n in objects["dropped"].items()]
    if "captions" in summary:
        rows += [("captions written", summary["captions"]["written"]),
                 ("captions for unknown images", summary["captions"]["unknown_image"])]
    width = max(len(label) for label, _ in rows) + 2
    title = f"{summary['dataset']} {summary['source']} -> {summary['num_shards']} shards"
    return "\n".join([title] + [f"{label:<{width}}{value:>9}" for label, value in rows])


_LABELS = {
    "missing_file": "missing file", "unreadable": "unreadable image", DUPLICATE_ID: "duplicate image id",
    MISSING_ANNOTATION: "missing XML", BAD_ANNOTATION: "unparsable XML", UNKNOWN_IMAGE: "image id not in images",
    UNKNOWN_CATEGORY: "unknown category", MALFORMED: "malformed box", NON_POSITIVE_SIZE: "zero or negative size",
    IMAGE_DROPPED: "its image dropped", OUTSIDE_IMAGE: "outside the image",
}


def _words(key: str) -> str:
    return _LABELS.get(key, key.replace("_", " "))

