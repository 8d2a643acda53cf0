"""The embedded synthetic detection dataset "shapes": the project's default data, generated offline in seconds.

Six classes of filled shapes (circle, square, triangle, star, ring, cross) in random colours, sizes, aspect
ratios and rotations, 1 to 6 per image (about 3 % of the images have none), on cluttered backgrounds: smooth
gradients or colour blotches with a texture, thin lines, irregular blobs and open arcs that belong to no class,
and mild Gaussian noise. Colour is not tied to the class, so the shape itself must be learned.

Layout written by `generate_shapes` (COCO format, boxes [x, y, w, h] in pixels, category ids 1..6):

    <output_dir>/train/images/000000.jpg ...
    <output_dir>/val/images/000000.jpg ...
    <output_dir>/annotations/instances_train.json
    <output_dir>/annotations/instances_val.json

Every image comes from its own random generator seeded with (seed, split, index), so the bytes written do not
depend on the number of worker processes. A generation is built in a temporary sibling directory and renamed
into place at the end: a directory at `output_dir` is always a finished one. `ensure_shapes` keeps one such
directory per (seed, counts, image size) in a cache directory and generates it only when it is missing.

Shapes are drawn with Pillow at twice the resolution and reduced (antialiased edges). Each box is the tight box
of the shape's pixels that stay visible (coverage above 20 %) once the later objects are drawn; an object is
only placed when its box overlaps no earlier box with IoU above 0.4 and leaves every earlier object at least 70 %
visible.
"""
import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import socket
import time
import uuid
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from effdet.config.schema import SyntheticConfig, default_of

log = logging.getLogger(__name__)

CLASS_NAMES = ("circle", "square", "triangle", "star", "ring", "cross")
SUPERCATEGORY = "shape"
GENERATOR = "effdet.data.shapes"
GENERATOR_VERSION = 1  # bump whenever the pixels or the annotations change: caches of older versions regenerate
SPLITS = ("train", "val")
_SPLIT_CODES = {"train": 0, "val": 1}

# data.synthetic's defaults (SyntheticConfig in the schema), for the generator's own command line and callers
DEFAULT_SEED = default_of(SyntheticConfig, "seed")
DEFAULT_NUM_TRAIN = default_of(SyntheticConfig, "num_train")
DEFAULT_NUM_VAL = default_of(SyntheticConfig, "num_val")
DEFAULT_IMAGE_SIZE = (default_of(SyntheticConfig, "image_size"),) * 2
JPEG_QUALITY = 90

SUPERSAMPLE = 2  # shapes are drawn at 2x and reduced
MIN_SIZE, MAX_SIZE = 0.08, 0.45  # longer side of a shape (before rotation), as a fraction of the image's shorter side
MIN_ASPECT, MAX_ASPECT = 0.6, 1.6
MAX_ROTATION = 30.0  # degrees, for square, triangle, star and cross
MAX_OBJECTS = 6
NEGATIVE_FRACTION = 0.03
MAX_BOX_IOU = 0.4
MIN_VISIBLE = 0.7  # fraction of an object's pixels that must stay visible under the later objects
VISIBLE_ALPHA = 0.2  # a pixel belongs to an object's box when the object covers more than this fraction of it
MIN_CONTRAST = 100.0  # RGB distance wanted between an object's colour and what lies under it
PLACEMENT_ATTEMPTS = 30
COLOUR_ATTEMPTS = 16

Size = Union[int, Sequence[int]]


# ----------------------------------------------------------------------------------------------------- rendering


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random generator of one image: a function of (seed, split, index) only."""
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODES[split], int(index)]))


def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """The outline of a polygonal class, scaled so that its bounding box is [-1, 1] x [-1, 1]; y points down."""
    if name == "square":
        points = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    elif name == "triangle":
        points = [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    elif name == "star":
        inner = rng.uniform(0.38, 0.5)
        points = []
        for k in range(10):  # math, not numpy, trigonometry: the same values on every CPU
            angle, radius = -math.pi / 2 + k * math.pi / 5, 1.0 if k % 2 == 0 else inner
            points.append((math.cos(angle) * radius, math.sin(angle) * radius))
    elif name == "cross":
        t = rng.uniform(0.2, 0.34)  # half the thickness of an arm
        points = [(t, -1.0), (t, -t), (1.0, -t), (1.0, t), (t, t), (t, 1.0),
                  (-t, 1.0), (-t, t), (-1.0, t), (-1.0, -t), (-t, -t), (-t, -1.0)]
    else:
        raise ValueError(f"not a polygonal class: {name}")
    points = np.asarray(points, np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    return (points - (low + high) / 2) / ((high - low) / 2)


def _sample_shape(rng: np.random.Generator, name: str, height: int, width: int) -> dict:
    """Random geometry of one shape, placed so that it stays one pixel away from the image's border."""
    side = min(height, width)
    size = rng.uniform(MIN_SIZE, MAX_SIZE) * side
    aspect = math.exp(rng.uniform(math.log(MIN_ASPECT), math.log(MAX_ASPECT)))
    half_w, half_h = (size / 2, size / 2 / aspect) if aspect >= 1 else (size / 2 * aspect, size / 2)
    shape = {"name": name}
    if name in ("circle", "ring"):
        low, high = np.array([-half_w, -half_h]), np.array([half_w, half_h])
        shape["radii"] = (half_w, half_h)
        if name == "ring":
            shape["inner"] = rng.uniform(0.45, 0.7)
    else:
        theta = math.radians(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
        cos, sin = math.cos(theta), math.sin(theta)
        x, y = (_unit_polygon(name, rng) * [half_w, half_h]).T
        points = np.stack([x * cos - y * sin, x * sin + y * cos], axis=1)  # elementwise (no BLAS): same bits anywhere
        low, high = points.min(axis=0), points.max(axis=0)
        shape["points"] = points
    # Centre ranges keep the extent inside [1, size - 1]; the extent never exceeds the image (sizes <= 0.62 side).
    cx = rng.uniform(1 - low[0], max(1 - low[0], width - 1 - high[0]))
    cy = rng.uniform(1 - low[1], max(1 - low[1], height - 1 - high[1]))
    shape["centre"] = (cx, cy)
    shape["extent"] = (cx + low[0], cy + low[1], cx + high[0], cy + high[1])
    return shape


def _patch_box(extent, height: int, width: int, pad: float = 1.0) -> Tuple[int, int, int, int]:
    x0, y0, x1, y1 = extent
    return (max(0, int(math.floor(x0 - pad))), max(0, int(math.floor(y0 - pad))),
            min(width, int(math.ceil(x1 + pad))), min(height, int(math.ceil(y1 + pad))))


def _rasterize(draw_fn, box: Tuple[int, int, int, int]) -> np.ndarray:
    """Coverage in [0, 1] of what draw_fn draws, over box = (x0, y0, x1, y1) in pixels of the image.

    draw_fn(draw, to_patch) draws with fill 255 (0 erases) on a SUPERSAMPLE-times larger canvas; to_patch maps
    image coordinates (x, y) to that canvas, pixel centres included."""
    x0, y0, x1, y1 = box
    mask = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)

    def to_patch(x, y):
        return (x - x0) * SUPERSAMPLE - 0.5, (y - y0) * SUPERSAMPLE - 0.5

    draw_fn(ImageDraw.Draw(mask), to_patch)
    return np.asarray(mask.reduce(SUPERSAMPLE), np.float32) / 255.0


def _ellipse_box(to_patch, cx, cy, rx, ry):
    left, top = to_patch(cx - rx + 0.5 / SUPERSAMPLE, cy - ry + 0.5 / SUPERSAMPLE)
    right, bottom = to_patch(cx + rx - 0.5 / SUPERSAMPLE, cy + ry - 0.5 / SUPERSAMPLE)
    return [left, top, max(left, right), max(top, bottom)]


def _shape_alpha(shape: dict, height: int, width: int) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    box = _patch_box(shape["extent"], height, width)
    cx, cy = shape["centre"]

    def draw_fn(draw, to_patch):
        if "points" in shape:
            draw.polygon([to_patch(cx + px, cy + py) for px, py in shape["points"]], fill=255)
            return
        rx, ry = shape["radii"]
        draw.ellipse(_ellipse_box(to_patch, cx, cy, rx, ry), fill=255)
        if "inner" in shape:
            draw.ellipse(_ellipse_box(to_patch, cx, cy, rx * shape["inner"], ry * shape["inner"]), fill=0)

    return _rasterize(draw_fn, box), box


def _composite(canvas: np.ndarray, alpha: np.ndarray, box, colour) -> None:
    """canvas[:, box] = (1 - alpha) * canvas[:, box] + alpha * colour, on a channel-first canvas [3, H, W];
    colour is RGB, or channel-first values of the box's shape. Only the rows and columns alpha covers change."""
    rows = np.flatnonzero(alpha.any(axis=1))
    cols = np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    x0, y0 = box[0], box[1]
    a = alpha[r0:r1, c0:c1]
    region = canvas[:, y0 + r0:y0 + r1, x0 + c0:x0 + c1]
    colour = np.asarray(colour, np.float32)
    colour = colour[:, r0:r1, c0:c1] if colour.ndim == 3 else colour[:, None, None]
    region += a * (colour - region)


def _upsample(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """A small float map [h, w] resized smoothly (bicubic) to [height, width]."""
    image = Image.fromarray(np.ascontiguousarray(values, np.float32), mode="F")
    return np.asarray(image.resize((width, height), Image.BICUBIC), np.float32)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random background [3, H, W]: linear or radial gradient, or colour blotches; plus a luminance
    texture."""
    kind = rng.integers(3)
    ys = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
    xs = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    start, stop = (rng.uniform(0, 255, (3, 1, 1)).astype(np.float32) for _ in range(2))
    if kind == 0:
        angle = rng.uniform(0, 2 * math.pi)
        t = xs * np.float32(math.cos(angle)) + ys * np.float32(math.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        canvas = start + (stop - start) * t[None]
    elif kind == 1:
        cx, cy = rng.uniform(0, 1, 2).astype(np.float32)
        t = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
        t = t / max(float(t.max()), 1e-6)
        canvas = start + (stop - start) * t[None]
    else:
        cells = int(rng.integers(2, 6))
        blotches = rng.uniform(0, 255, (3, cells, cells))
        canvas = np.stack([_upsample(channel, height, width) for channel in blotches])
    cells = int(rng.integers(6, 33))
    texture = _upsample(rng.standard_normal((cells, cells)), height, width)
    canvas += np.float32(rng.uniform(0, 20)) * texture[None]
    return np.clip(canvas, 0, 255, out=canvas)


def _clutter(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Thin lines, irregular blobs and open arcs in random colours: things of no class, under the objects."""
    height, width = canvas.shape[1:]
    side = min(height, width)
    for _ in range(int(rng.integers(1, 5))):  # thin straight or bent lines across the image
        count = int(rng.integers(2, 5))
        points = rng.uniform([-0.1 * width, -0.1 * height], [1.1 * width, 1.1 * height], (count, 2))
        line_width = int(rng.integers(1, 3)) * SUPERSAMPLE

        def draw_line(draw, to_patch, points=points, line_width=line_width):
            draw.line([to_patch(x, y) for x, y in points], fill=255, width=line_width, joint="curve")

        _composite(canvas, _rasterize(draw_line, (0, 0, width, height)), (0, 0, width, height),
                   rng.uniform(0, 255, 3))
    for _ in range(int(rng.integers(1, 5))):  # small splats: many irregular spikes, neither round nor star-like
        count = int(rng.integers(14, 23))
        angles = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * (2 * math.pi / count)
        radii = rng.uniform(0.35, 1.0, count) * rng.uniform(0.025, 0.07) * side
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        points = np.array([(cx + math.cos(a) * r, cy + math.sin(a) * r) for a, r in zip(angles, radii)])
        box = _patch_box((*points.min(axis=0), *points.max(axis=0)), height, width)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue

        def draw_blob(draw, to_patch, points=points):
            draw.polygon([to_patch(x, y) for x, y in points], fill=255)

        _composite(canvas, _rasterize(draw_blob, box), box, rng.uniform(0, 255, 3))
    for _ in range(int(rng.integers(0, 3))):  # open arcs (never a full ring)
        radius = rng.uniform(0.04, 0.2) * side
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        start = rng.uniform(0, 360)
        stop = start + rng.uniform(60, 220)
        arc_width = int(rng.integers(1, 4)) * SUPERSAMPLE
        box = _patch_box((cx - radius, cy - radius, cx + radius, cy + radius), height, width)
        if box[2] <= box[0] or box[3] <= box[1]:
            continue

        def draw_arc(draw, to_patch, cx=cx, cy=cy, radius=radius, start=start, stop=stop, arc_width=arc_width):
            draw.arc(_ellipse_box(to_patch, cx, cy, radius, radius), start, stop, fill=255, width=arc_width)

        _composite(canvas, _rasterize(draw_arc, box), box, rng.uniform(0, 255, 3))


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _overlap(a, b):
    """(slices into patch a, slices into patch b) over the intersection of boxes a and b, or None."""
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    if x0 >= x1 or y0 >= y1:
        return None
    return ((slice(y0 - a[1], y1 - a[1]), slice(x0 - a[0], x1 - a[0])),
            (slice(y0 - b[1], y1 - b[1]), slice(x0 - b[0], x1 - b[0])))


def _pick_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour, redrawn (a few times at most) until it stands out from the mean colour under the shape."""
    best, best_distance = None, -1.0
    for _ in range(COLOUR_ATTEMPTS):
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        distance = math.dist(colour.tolist(), under.tolist())
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= MIN_CONTRAST:
            break
    return best


def render_image(rng: np.random.Generator, height: int, width: int, plain: bool = False,
                 num_objects: Optional[int] = None) -> Tuple[np.ndarray, List[dict]]:
    """One image (uint8 [height, width, 3]) and its objects [{category_id, bbox [x, y, w, h], area}].

    plain=True draws solid shapes on a uniform background without clutter, shading or noise (for tests); the
    pixel at (0, 0) is then always background, since shapes keep one pixel away from the border. num_objects
    overrides the random count (objects that cannot be placed without too much overlap are skipped)."""
    if plain:
        canvas = np.empty((3, height, width), np.float32)
        canvas[:] = rng.uniform(0, 255, (3, 1, 1)).astype(np.float32)
    else:
        canvas = _background(rng, height, width)
        _clutter(rng, canvas)
    if num_objects is None:
        num_objects = 0 if rng.uniform() < NEGATIVE_FRACTION else int(rng.integers(1, MAX_OBJECTS + 1))
    placed = []  # {category_id, box, visible: coverage over box left by the later objects, extent, area}
    for _ in range(num_objects):
        category = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(PLACEMENT_ATTEMPTS):
            shape = _sample_shape(rng, CLASS_NAMES[category], height, width)
            alpha, box = _shape_alpha(shape, height, width)
            if not (alpha > VISIBLE_ALPHA).any():
                continue
            if any(_box_iou(shape["extent"], other["extent"]) > MAX_BOX_IOU for other in placed):
                continue
            overlaps = [_overlap(other["box"], box) for other in placed]
            covered = [float((other["visible"][ov[0]] * alpha[ov[1]]).sum()) if ov else 0.0
                       for other, ov in zip(placed, overlaps)]
            if any(other["visible_sum"] - c < MIN_VISIBLE * other["area"] for other, c in zip(placed, covered)):
                continue
            break
        else:
            continue  # no room for this one
        for other, ov, c in zip(placed, overlaps, covered):
            if ov:
                other["visible"][ov[0]] *= 1.0 - alpha[ov[1]]
                other["visible_sum"] -= c
        inside = alpha > 0.5
        under = canvas[:, box[1]:box[3], box[0]:box[2]][:, inside].mean(axis=1) if inside.any() else canvas[:, 0, 0]
        colour = _pick_colour(rng, under)
        if not plain:  # mild shading: a linear ramp of brightness across the shape
            ramp_angle = rng.uniform(0, 2 * math.pi)
            gain = np.float32(rng.uniform(-25, 25))
            ys, xs = np.mgrid[box[1]:box[3], box[0]:box[2]].astype(np.float32)
            ramp = (xs - shape["centre"][0]) * math.cos(ramp_angle) + (ys - shape["centre"][1]) * math.sin(ramp_angle)
            ramp /= max(float(np.abs(ramp).max()), 1.0)
            colour = np.clip(colour[:, None, None] + gain * ramp[None], 0, 255)
        _composite(canvas, alpha, box, colour)
        area = float(alpha.sum())
        placed.append({"category_id": category + 1, "visible": alpha.copy(), "visible_sum": area, "area": area,
                       "box": box, "extent": shape["extent"]})
    if not plain:
        sigma = np.float32(rng.uniform(1.5, 6.0))
        canvas += sigma * rng.standard_normal((1, height, width), dtype=np.float32)  # luminance noise
    np.rint(np.clip(canvas, 0, 255, out=canvas), out=canvas)
    pixels = canvas.transpose(1, 2, 0).astype(np.uint8, order="C")
    objects = []
    for item in placed:
        x0, y0 = item["box"][:2]
        visible = item["visible"]
        rows = np.flatnonzero((visible > VISIBLE_ALPHA).any(axis=1))
        cols = np.flatnonzero((visible > VISIBLE_ALPHA).any(axis=0))
        if not len(rows):
            continue
        bbox = [int(x0 + cols[0]), int(y0 + rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
        objects.append({"category_id": item["category_id"], "bbox": bbox, "area": round(float(visible.sum()), 2)})
    return pixels, objects


def render_sample(seed: int, split: str, index: int, image_size: Size = DEFAULT_IMAGE_SIZE):
    """Image `index` of `split` for `seed`: exactly what generate_shapes writes (before JPEG encoding)."""
    height, width = _size(image_size)
    return render_image(sample_rng(seed, split, index), height, width)


# ---------------------------------------------------------------------------------------------------- the files


def _size(image_size: Size) -> Tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        height = width = int(image_size)
    else:
        height, width = (int(v) for v in image_size)
    if height < 16 or width < 16:
        raise ValueError(f"image_size must be at least 16x16, got {height}x{width}")
    return height, width


def images_dir(root: str, split: str) -> str:
    return os.path.join(root, split, "images")


def annotations_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"instances_{split}.json")


def shapes_key(seed: int, num_train: int, num_val: int, image_size: Size) -> str:
    """The cache subdirectory of a generation, e.g. shapes-s0-1600x200-320x320."""
    height, width = _size(image_size)
    return f"shapes-s{int(seed)}-{int(num_train)}x{int(num_val)}-{height}x{width}"


def _file_name(index: int, count: int) -> str:
    return f"{index:0{max(6, len(str(max(count - 1, 0))))}d}.jpg"


def _write_image(task):
    """Worker: render one image, write its JPEG, return its annotations."""
    root, seed, split, index, count, height, width = task
    pixels, objects = render_image(sample_rng(seed, split, index), height, width)
    name = _file_name(index, count)
    Image.fromarray(pixels).save(os.path.join(images_dir(root, split), name), "JPEG", quality=JPEG_QUALITY)
    return split, index, name, objects


def _coco(split, seed, height, width, results) -> dict:
    images, annotations = [], []
    for index, name, objects in results:
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        for item in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": item["category_id"],
                                "bbox": item["bbox"], "area": item["area"], "iscrowd": 0})
    return {
        "info": {"description": "effdet synthetic shapes", "generator": GENERATOR, "version": GENERATOR_VERSION,
                 "seed": int(seed), "split": split, "image_size": [height, width]},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": SUPERCATEGORY}
                       for i, name in enumerate(CLASS_NAMES)],
    }


def _default_workers(total: int) -> int:
    if total < 64:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8))


def _temp_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-"


def _remove_stale_temps(parent: str, name: str) -> None:
    """Removes temporary directories of generations of `name` that this host started and that died."""
    prefix = _temp_prefix(name)
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def generate_shapes(output_dir: str, seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                    num_val: int = DEFAULT_NUM_VAL, image_size: Size = DEFAULT_IMAGE_SIZE,
                    workers: Optional[int] = None) -> dict:
    """Writes the dataset to output_dir (replacing what is there), deterministically from seed.

    workers: processes that render (default: the available cores, 1 for small sets); the files do not depend
    on it. Returns {output_dir, seconds, class_names, train: {...}, val: {...}}, each split with images_dir,
    annotations, num_images, num_objects and num_negatives."""
    height, width = _size(image_size)
    counts = {"train": int(num_train), "val": int(num_val)}
    if int(seed) < 0 or min(counts.values()) < 0:
        raise ValueError(f"seed and counts must be non-negative, got seed={seed}, counts={counts}")
    started = time.perf_counter()
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f"{_temp_prefix(name)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        for split in SPLITS:
            os.makedirs(images_dir(temp, split))
        os.makedirs(os.path.dirname(annotations_path(temp, "train")))
        tasks = [(temp, int(seed), split, index, counts[split], height, width)
                 for split in SPLITS for index in range(counts[split])]
        workers = _default_workers(len(tasks)) if workers is None else max(1, int(workers))
        if workers == 1:
            results = [_write_image(task) for task in tasks]
        else:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            with multiprocessing.get_context(method).Pool(workers) as pool:
                results = pool.map(_write_image, tasks, chunksize=max(1, len(tasks) // (workers * 8)))
        summary = {"output_dir": output_dir, "class_names": CLASS_NAMES}
        for split in SPLITS:
            split_results = [(index, file_name, objects) for s, index, file_name, objects in results if s == split]
            coco = _coco(split, seed, height, width, split_results)
            with open(annotations_path(temp, split), "w") as handle:
                json.dump(coco, handle, separators=(",", ":"))
            summary[split] = {
                "images_dir": images_dir(output_dir, split),
                "annotations": annotations_path(output_dir, split),
                "num_images": len(coco["images"]),
                "num_objects": len(coco["annotations"]),
                "num_negatives": sum(1 for _, _, objects in split_results if not objects),
            }
        _move_into_place(temp, output_dir)
    finally:
        if os.path.exists(temp):
            shutil.rmtree(temp, ignore_errors=True)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    return summary


def _move_into_place(temp: str, output_dir: str) -> None:
    """Renames the finished temp directory to output_dir; an existing output_dir is replaced."""
    old = None
    if os.path.lexists(output_dir):
        old = f"{temp}.old"
        os.rename(output_dir, old)
    try:
        os.rename(temp, output_dir)
    except OSError:
        if not shapes_is_complete(output_dir):  # another process may have just put a finished one there
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load_annotations(root: str, split: str) -> Optional[dict]:
    try:
        with open(annotations_path(root, split)) as handle:
            coco = json.load(handle)
    except (OSError, ValueError):
        return None
    return coco if isinstance(coco, dict) else None


def shapes_is_complete(output_dir: str) -> bool:
    """True when output_dir holds a finished generation of this generator version: both annotation files load
    and every image they list exists."""
    for split in SPLITS:
        coco = _load_annotations(output_dir, split)
        if coco is None:
            return False
        info = coco.get("info") or {}
        if info.get("generator") != GENERATOR or info.get("version") != GENERATOR_VERSION:
            return False
        for image in coco.get("images", []):
            path = os.path.join(images_dir(output_dir, split), str(image.get("file_name")))
            try:
                if os.path.getsize(path) == 0:
                    return False
            except OSError:
                return False
    return True


def _matches(root: str, seed: int, counts: Dict[str, int], size: Tuple[int, int]) -> bool:
    for split in SPLITS:
        coco = _load_annotations(root, split) or {}
        info = coco.get("info") or {}
        if (info.get("seed") != seed or info.get("image_size") != list(size)
                or len(coco.get("images", [])) != counts[split]):
            return False
    return True


def ensure_shapes(cache_dir: str, seed: int = DEFAULT_SEED, num_train: int = DEFAULT_NUM_TRAIN,
                  num_val: int = DEFAULT_NUM_VAL, image_size: Size = DEFAULT_IMAGE_SIZE,
                  workers: Optional[int] = None) -> str:
    """The directory of the dataset for these settings under cache_dir, generated only if it is not there yet
    (or is incomplete, or comes from another generator version)."""
    size = _size(image_size)
    path = os.path.join(os.path.abspath(cache_dir), shapes_key(seed, num_train, num_val, size))
    counts = {"train": int(num_train), "val": int(num_val)}
    if shapes_is_complete(path) and _matches(path, int(seed), counts, size):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_temps(os.path.dirname(path), os.path.basename(path))
    log.info("generating the shapes dataset in %s (one time)", path)
    summary = generate_shapes(path, seed, num_train, num_val, size, workers=workers)
    log.info("generated %d + %d images in %.1f s", summary["train"]["num_images"], summary["val"]["num_images"],
             summary["seconds"])
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output_dir")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument("--image-size", type=int, nargs=2, default=list(DEFAULT_IMAGE_SIZE), metavar=("H", "W"))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    summary = generate_shapes(args.output_dir, args.seed, args.num_train, args.num_val, args.image_size,
                              workers=args.workers)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
