"""Learned augmentation policies for detection (Zoph et al., 2019, "Learning Data Augmentation Strategies
for Object Detection"), with boxes kept consistent with the image.

A policy is a list of sub-policies; one sub-policy is chosen uniformly per example and its operations
run in order, each with its own probability. An operation is (name, probability, magnitude), magnitudes
0–10 being mapped to each operation's range as in the paper's published code. `_BBox` operations move
the image and the boxes together; `_Only_BBoxes` operations change only the pixels inside the boxes
(each box independently, with a third of the operation's probability) and leave the boxes where they
are; colour operations leave the boxes alone.

Images are float32 [H, W, 3] in [0, 255], boxes float32 [N, 4] (ymin, xmin, ymax, xmax) in pixels.
Every random draw is stateless and comes from the example's seed, folded with a salt of its own
(≥ 100, apart from those of `augment`), so a fixed seed gives the same augmentation everywhere.
"""
import math
from typing import Callable, Dict, List, Sequence, Tuple

import tensorflow as tf

from effdet.errors import ConfigError, unknown_name_message

MAX_MAGNITUDE = 10.0
# Magnitude 10 ↦ these (the paper's code: translate 250 px, bbox-only translate 120 px, shear 0.3,
# 30 degrees, cutout half-size 100 px). Enhance factors (colour, sharpness) are m/10 · 1.8 + 0.1.
TRANSLATE_MAX = 250.0
TRANSLATE_BBOX_ONLY_MAX = 120.0
SHEAR_MAX = 0.3
ROTATE_MAX_DEGREES = 30.0
CUTOUT_MAX_HALF_SIZE = 100.0
# Bbox-only operations run on each box with this fraction of the operation's probability.
BBOX_ONLY_PROBABILITY_SCALE = 1.0 / 3.0

# What uncovered pixels become. Warps fill with zeros, like the pipeline's padding; cutout and the
# pixels a box's content leaves behind get mid-grey, as in the paper's code.
WARP_FILL = 0.0
# Nearest neighbour, as the paper's code (and cheaper than bilinear by about a third).
WARP_INTERPOLATION = "NEAREST"
REPLACE = 128.0

POLICIES: Dict[str, List[List[Tuple[str, float, int]]]] = {
    "v0": [
        [("TranslateX_BBox", 0.6, 4), ("Equalize", 0.8, 10)],
        [("TranslateY_Only_BBoxes", 0.2, 2), ("Cutout", 0.8, 8)],
        [("Sharpness", 0.0, 8), ("ShearX_BBox", 0.4, 0)],
        [("ShearY_BBox", 1.0, 2), ("TranslateY_Only_BBoxes", 0.6, 6)],
        [("Rotate_BBox", 0.6, 10), ("Color", 1.0, 6)],
    ],
}

# Salts: 100 picks the sub-policy; operation k of a policy (counted over all its sub-policies) owns
# 110 + 10k … 119 + 10k.
_CHOICE_SALT = 100
_FIRST_OP_SALT = 110
_SALTS_PER_OP = 10
# Offsets inside an operation's salts.
_APPLY, _SIGN, _CENTER_Y, _CENTER_X, _PER_BOX = 0, 1, 2, 3, 4


# --- random draws -------------------------------------------------------------------------------------

def _salted(seed, salt: int):
    # Folding (rather than adding the salt to the seed) keeps neighbouring examples' draws unrelated: the
    # pipeline's seeds are (run seed, example index), so seed + salt would alias index + salt.
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)


def _uniform(seed, salt: int, shape=(), low=0.0, high=1.0):
    return tf.random.stateless_uniform(shape, seed=_salted(seed, salt), minval=low, maxval=high)


def _randint(seed, salt: int, high):
    """Uniform integer in [0, high)."""
    return tf.random.stateless_uniform([], seed=_salted(seed, salt), minval=0, maxval=high, dtype=tf.int32)


def _random_sign(seed, salt: int):
    return tf.where(_uniform(seed, salt) < 0.5, -1.0, 1.0)


# --- geometry: the image and its boxes together ---------------------------------------------------------

def _affine(image, boxes, matrix, offset):
    """Moves the point (x, y) of the image, in continuous pixel coordinates (pixel i spans [i, i + 1]),
    to matrix · (x, y) + offset; boxes become the bounding boxes of their moved corners, clipped to
    the image. Uncovered pixels become WARP_FILL."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    matrix = tf.cast(matrix, tf.float32)
    offset = tf.cast(offset, tf.float32)
    # The image op wants, for each output pixel index, the input pixel index: the inverse map, shifted by
    # the half pixel between indices and coordinates.
    inverse = tf.linalg.inv(matrix)
    inverse_offset = tf.linalg.matvec(inverse, 0.5 - offset) - 0.5
    transform = tf.concat([inverse[0], inverse_offset[:1], inverse[1], inverse_offset[1:], tf.zeros([2])], 0)
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.stack([height, width]),
        fill_value=tf.constant(WARP_FILL, tf.float32), interpolation=WARP_INTERPOLATION, fill_mode="CONSTANT")[0]

    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
    xs = tf.stack([xmin, xmax, xmin, xmax], axis=1)  # [N, 4 corners]
    ys = tf.stack([ymin, ymin, ymax, ymax], axis=1)
    new_x = matrix[0, 0] * xs + matrix[0, 1] * ys + offset[0]
    new_y = matrix[1, 0] * xs + matrix[1, 1] * ys + offset[1]
    moved = tf.stack([tf.reduce_min(new_y, axis=1), tf.reduce_min(new_x, axis=1),
                      tf.reduce_max(new_y, axis=1), tf.reduce_max(new_x, axis=1)], axis=1)
    return warped, _clip_boxes(tf.reshape(moved, tf.shape(boxes)), height, width)


def _clip_boxes(boxes, height, width):
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    return tf.clip_by_value(boxes, 0.0, size)


def _shift(image, dy, dx, fill):
    """The image content moved by whole pixels (dy, dx) (int32); what is uncovered becomes `fill`."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[tf.maximum(dy, 0), tf.maximum(-dy, 0)], [tf.maximum(dx, 0), tf.maximum(-dx, 0)],
                            [0, 0]], constant_values=fill)
    return tf.slice(padded, tf.stack([tf.maximum(-dy, 0), tf.maximum(-dx, 0), 0]), shape)


def translate_bbox(image, boxes, pixels_y, pixels_x):
    """Shifts the image content and the boxes by whole pixels (rounded); content shifted out is lost and
    what is uncovered becomes WARP_FILL (no interpolation: a pure shift)."""
    dy = tf.cast(tf.round(tf.cast(pixels_y, tf.float32)), tf.int32)
    dx = tf.cast(tf.round(tf.cast(pixels_x, tf.float32)), tf.int32)
    shifted = _shift(image, dy, dx, WARP_FILL)
    offset = tf.cast(tf.stack([dy, dx, dy, dx]), tf.float32)
    return shifted, _clip_boxes(boxes + offset, tf.shape(image)[0], tf.shape(image)[1])


def translate_x_bbox(image, boxes, pixels):
    return translate_bbox(image, boxes, 0.0, pixels)


def translate_y_bbox(image, boxes, pixels):
    return translate_bbox(image, boxes, pixels, 0.0)


def shear_x_bbox(image, boxes, level):
    """x ↦ x + level · y (about the top-left corner, as in the paper's code)."""
    level = tf.cast(level, tf.float32)
    return _affine(image, boxes, tf.stack([[1.0, level], [0.0, 1.0]]), tf.zeros([2]))


def shear_y_bbox(image, boxes, level):
    """y ↦ y + level · x."""
    level = tf.cast(level, tf.float32)
    return _affine(image, boxes, tf.stack([[1.0, 0.0], [level, 1.0]]), tf.zeros([2]))


def rotate_bbox(image, boxes, degrees):
    """Rotates about the image centre; positive degrees turn the content anticlockwise as displayed."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(radians), tf.sin(radians)
    # With y pointing down, an anticlockwise turn on screen is x' = cos x + sin y, y' = -sin x + cos y.
    matrix = tf.stack([[cos, sin], [-sin, cos]])
    center = tf.cast(tf.stack([tf.shape(image)[1], tf.shape(image)[0]]), tf.float32) / 2.0
    return _affine(image, boxes, matrix, center - tf.linalg.matvec(matrix, center))


# --- bbox-only -----------------------------------------------------------------------------------------

def _pixels_in(low, high, size):
    """[N, size]: whether each pixel's centre lies in [low, high] of each box."""
    centres = tf.range(tf.cast(size, tf.float32)) + 0.5
    return tf.logical_and(low[:, None] <= centres[None], centres[None] <= high[:, None])


def translate_only_bboxes(image, boxes, pixels_y, pixels_x, seed, probability, salt: int = _FIRST_OP_SALT):
    """Shifts the content of each box inside that box (each box with `probability`), by whole pixels;
    what is shifted past the box's edge is lost and what it leaves behind becomes REPLACE. Pixels
    outside the chosen boxes and the boxes themselves do not change. Where boxes overlap, a pixel takes
    the shifted content when its source lies in a chosen box that also holds the pixel."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    dy = tf.cast(tf.round(tf.cast(pixels_y, tf.float32)), tf.int32)
    dx = tf.cast(tf.round(tf.cast(pixels_x, tf.float32)), tf.int32)
    chosen = _uniform(seed, salt + _PER_BOX, tf.shape(boxes)[:1]) < probability
    ymin, xmin, ymax, xmax = tf.unstack(_clip_boxes(boxes, height, width), axis=1)

    def shift_boxes():
        return _shift_inside(image, ymin, xmin, ymax, xmax, tf.cast(chosen, tf.float32)[:, None], dy, dx)

    return tf.cond(tf.reduce_any(chosen), shift_boxes, lambda: image)


def _shift_inside(image, ymin, xmin, ymax, xmax, chosen, dy, dx):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    fdy, fdx = tf.cast(dy, tf.float32), tf.cast(dx, tf.float32)
    rows = _pixels_in(ymin, ymax, height)
    cols = _pixels_in(xmin, xmax, width)
    # Output row r takes input row r - dy: the source is in the box when r - dy is.
    source_rows = tf.logical_and(rows, _pixels_in(ymin + fdy, ymax + fdy, height))
    source_cols = tf.logical_and(cols, _pixels_in(xmin + fdx, xmax + fdx, width))
    # any over boxes of (row in box and column in box) = a product of [H, N] by [N, W].
    inside = tf.matmul(tf.cast(rows, tf.float32) * chosen, tf.cast(cols, tf.float32), transpose_a=True) > 0
    valid = tf.matmul(tf.cast(source_rows, tf.float32) * chosen, tf.cast(source_cols, tf.float32),
                      transpose_a=True) > 0
    # Where the source is valid it lies inside the image, so the roll's wrapping never shows.
    shifted = tf.roll(image, tf.stack([dy, dx]), axis=[0, 1])
    hole = tf.fill(tf.shape(image), tf.constant(REPLACE, image.dtype))
    return _select_pixels(inside, _select_pixels(valid, shifted, hole), image)


def _select_pixels(mask, where_true, where_false):
    """Per pixel (mask [H, W]) one of two images [H, W, C]. Selecting whole rows of the flattened images
    is several times faster on CPU than tf.where broadcasting a [H, W, 1] mask over the channels."""
    shape = tf.shape(where_false)
    rows = tf.stack([shape[0] * shape[1], shape[2]])
    selected = tf.raw_ops.Select(condition=tf.reshape(mask, [-1]), x=tf.reshape(where_true, rows),
                                 y=tf.reshape(where_false, rows))
    return tf.reshape(selected, shape)


def translate_x_only_bboxes(image, boxes, pixels, seed, probability, salt: int = _FIRST_OP_SALT):
    return translate_only_bboxes(image, boxes, 0.0, pixels, seed, probability, salt)


def translate_y_only_bboxes(image, boxes, pixels, seed, probability, salt: int = _FIRST_OP_SALT):
    return translate_only_bboxes(image, boxes, pixels, 0.0, seed, probability, salt)


# --- pixels only ---------------------------------------------------------------------------------------

def blend(degenerate, image, factor):
    """degenerate + factor · (image − degenerate), clipped to [0, 255] (factor > 1 extrapolates)."""
    return tf.clip_by_value(factor * image + (1.0 - factor) * degenerate, 0.0, 255.0)


def color(image, factor):
    """PIL's Color: 0 is greyscale, 1 the image, more is more saturated."""
    # ITU-R 601-2 luma, as tf.image.rgb_to_grayscale and PIL; [H, W, 1] broadcasts over the channels.
    grey = image[..., :1] * 0.2989 + image[..., 1:2] * 0.5870 + image[..., 2:] * 0.1140
    return blend(grey, image, factor)


def sharpness(image, factor):
    """PIL's Sharpness: blends with the image smoothed by [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 (the
    one-pixel border stays as it is); 0 is smoothed, 1 the image, more is sharper."""
    # The 3×3 sum as two 3-tap sums of shifted slices (much cheaper on CPU than a depthwise convolution).
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    smooth = (box + 4.0 * image[1:-1, 1:-1]) / 13.0
    middle = tf.concat([image[1:-1, :1], smooth, image[1:-1, -1:]], axis=1)
    return blend(tf.concat([image[:1], middle, image[-1:]], axis=0), image, factor)


def equalize(image):
    """PIL's Equalize, per channel, on the image rounded to integers (a channel with a single value
    besides its brightest is only rounded)."""
    # Bins of width 1 centred on the integers: bin k holds the values that round (half up) to k.
    counts = tf.stack([tf.histogram_fixed_width(image[..., c], [-0.5, 255.5], nbins=256) for c in range(3)])
    occupied = counts > 0
    brightest = tf.reduce_max(tf.where(occupied, tf.range(256)[None], -1), axis=1)
    brightest_count = tf.gather(counts, tf.maximum(brightest, 0), batch_dims=1)
    step = (tf.reduce_sum(counts, axis=1) - brightest_count) // 255  # [3]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = (tf.cumsum(counts, axis=1) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([tf.zeros([3, 1], tf.int32), lut[:, :-1]], axis=1), 0, 255)
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None])
    levels = tf.cast(tf.clip_by_value(image + 0.5, 0.0, 255.0), tf.int32) + tf.range(3) * 256
    return tf.gather(tf.reshape(tf.cast(lut, image.dtype), [-1]), levels)


def cutout(image, seed, half_size, salt: int = _FIRST_OP_SALT):
    """Fills a (2·half_size)² square, centred on a uniformly random pixel (cut by the image's edges),
    with REPLACE."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    half = tf.cast(half_size, tf.int32)
    center_y = _randint(seed, salt + _CENTER_Y, height)
    center_x = _randint(seed, salt + _CENTER_X, width)
    y0, y1 = tf.maximum(center_y - half, 0), tf.minimum(center_y + half, height)
    x0, x1 = tf.maximum(center_x - half, 0), tf.minimum(center_x + half, width)
    # Pasting the pieces together costs less than a select over the whole image.
    block = tf.fill(tf.stack([tf.maximum(y1 - y0, 0), tf.maximum(x1 - x0, 0), tf.shape(image)[2]]),
                    tf.constant(REPLACE, image.dtype))
    band = tf.concat([image[y0:y1, :x0], block, image[y0:y1, x1:]], axis=1)
    out = tf.concat([image[:y0], band, image[y1:]], axis=0)
    out.set_shape(image.shape)
    return out


# --- operations by name --------------------------------------------------------------------------------

def _level(magnitude: float, maximum: float) -> float:
    return float(magnitude) / MAX_MAGNITUDE * maximum


def enhance_factor(magnitude: float) -> float:
    return float(magnitude) / MAX_MAGNITUDE * 1.8 + 0.1


# Each: (image, boxes, seed, probability, magnitude, salt) -> (image, boxes). Whole-image operations are
# applied (or not) by `apply_op`; bbox-only ones draw per box with the probability they get.
Op = Callable[..., Tuple[tf.Tensor, tf.Tensor]]


def _signed(seed, salt, magnitude, maximum):
    return _random_sign(seed, salt + _SIGN) * _level(magnitude, maximum)


_OPS: Dict[str, Op] = {
    "TranslateX_BBox": lambda i, b, s, p, m, salt: translate_x_bbox(i, b, _signed(s, salt, m, TRANSLATE_MAX)),
    "TranslateY_BBox": lambda i, b, s, p, m, salt: translate_y_bbox(i, b, _signed(s, salt, m, TRANSLATE_MAX)),
    "ShearX_BBox": lambda i, b, s, p, m, salt: shear_x_bbox(i, b, _signed(s, salt, m, SHEAR_MAX)),
    "ShearY_BBox": lambda i, b, s, p, m, salt: shear_y_bbox(i, b, _signed(s, salt, m, SHEAR_MAX)),
    "Rotate_BBox": lambda i, b, s, p, m, salt: rotate_bbox(i, b, _signed(s, salt, m, ROTATE_MAX_DEGREES)),
    "TranslateX_Only_BBoxes": lambda i, b, s, p, m, salt: (translate_x_only_bboxes(
        i, b, _signed(s, salt, m, TRANSLATE_BBOX_ONLY_MAX), s, p * BBOX_ONLY_PROBABILITY_SCALE, salt), b),
    "TranslateY_Only_BBoxes": lambda i, b, s, p, m, salt: (translate_y_only_bboxes(
        i, b, _signed(s, salt, m, TRANSLATE_BBOX_ONLY_MAX), s, p * BBOX_ONLY_PROBABILITY_SCALE, salt), b),
    "Equalize": lambda i, b, s, p, m, salt: (equalize(i), b),
    "Color": lambda i, b, s, p, m, salt: (color(i, enhance_factor(m)), b),
    "Sharpness": lambda i, b, s, p, m, salt: (sharpness(i, enhance_factor(m)), b),
    "Cutout": lambda i, b, s, p, m, salt: (cutout(i, s, int(_level(m, CUTOUT_MAX_HALF_SIZE)), salt), b),
}
_BBOX_ONLY = {name for name in _OPS if name.endswith("_Only_BBoxes")}
# Operations that do nothing at magnitude 0 (a zero shift, shear, angle or cutout): skipped outright.
_NOTHING_AT_ZERO = {name for name in _OPS if name not in ("Equalize", "Color", "Sharpness")}
OP_NAMES = tuple(sorted(_OPS))


def apply_op(name: str, image, boxes, seed, magnitude: float, probability: float = 1.0,
             salt: int = _FIRST_OP_SALT):
    """One operation with its probability (for bbox-only operations: a third of it, per box) and its
    magnitude 0–10; the sign of signed operations is random. Uses salts salt … salt + 9."""
    if name not in _OPS:
        raise ConfigError(unknown_name_message("autoaugment operation", name, _OPS))
    op = _OPS[name]
    image = tf.convert_to_tensor(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    seed = tf.cast(seed, tf.int64)
    if magnitude == 0 and name in _NOTHING_AT_ZERO:
        return image, boxes
    if name in _BBOX_ONLY:
        return op(image, boxes, seed, probability, magnitude, salt)
    if probability <= 0.0:
        return image, boxes
    if probability >= 1.0:
        return op(image, boxes, seed, probability, magnitude, salt)
    apply = _uniform(seed, salt + _APPLY) < probability
    return tf.cond(apply, lambda: op(image, boxes, seed, probability, magnitude, salt), lambda: (image, boxes))


# --- policies ------------------------------------------------------------------------------------------

def check_policy(name: str, where: str = "") -> List[List[Tuple[str, float, int]]]:
    """The policy called `name`, or ConfigError naming the valid ones."""
    if name not in POLICIES:
        raise ConfigError(unknown_name_message("autoaugment policy", name, POLICIES, where))
    policy = POLICIES[name]
    for sub_policy in policy:
        for op_name, probability, magnitude in sub_policy:
            if op_name not in _OPS:
                raise ConfigError(f"autoaugment policy '{name}' uses unknown operation '{op_name}'. "
                                  f"Valid: {', '.join(OP_NAMES)}.")
            if not 0.0 <= probability <= 1.0 or not 0 <= magnitude <= MAX_MAGNITUDE:
                raise ConfigError(f"autoaugment policy '{name}': ({op_name}, {probability}, {magnitude}) needs "
                                  f"a probability in [0, 1] and a magnitude in [0, {MAX_MAGNITUDE:g}]")
    return policy


def _sub_policy(ops: Sequence[Tuple[str, float, int]], first_salt: int, image, boxes, seed):
    def run():
        out_image, out_boxes = image, boxes
        for k, (name, probability, magnitude) in enumerate(ops):
            out_image, out_boxes = apply_op(name, out_image, out_boxes, seed, magnitude, probability,
                                            first_salt + _SALTS_PER_OP * k)
        return out_image, out_boxes
    return run


def autoaugment(image, boxes, seed, policy: str = "v0"):
    """Applies one uniformly chosen sub-policy of `policy` to image float32 [H, W, 3] in [0, 255] and
    boxes float32 [N, 4] (ymin, xmin, ymax, xmax) in its pixels. Returns (image, boxes) of the same
    shapes; boxes moved out of the image come back clipped to zero area (drop them afterwards)."""
    sub_policies = check_policy(policy)
    image = tf.convert_to_tensor(image, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    seed = tf.cast(seed, tf.int64)
    branches, salt = [], _FIRST_OP_SALT
    for ops in sub_policies:
        branches.append(_sub_policy(ops, salt, image, boxes, seed))
        salt += _SALTS_PER_OP * len(ops)
    choice = _randint(seed, _CHOICE_SALT, len(branches))
    out_image, out_boxes = tf.switch_case(choice, branches)
    out_image.set_shape(image.shape)
    out_boxes.set_shape(boxes.shape)
    return out_image, out_boxes
