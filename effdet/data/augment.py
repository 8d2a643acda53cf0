"""Geometric augmentation for detection, with boxes kept consistent with the image.

Every random choice is stateless, drawn from a per-example seed, so a fixed seed gives the same
augmentations on every run and every machine.
"""
from typing import Tuple

import tensorflow as tf


def _uniform(seed, low=0.0, high=1.0, salt=0):
    # fold_in mixes the whole seed: (run, example k) salted never equals (run, example k + 1) salted
    salted = tf.random.experimental.stateless_fold_in(seed, salt)
    return tf.random.stateless_uniform([], seed=salted, minval=low, maxval=high)


def horizontal_flip(image, boxes, seed, probability: float = 0.5):
    """image [H, W, C]; boxes [N, 4] in pixels of that image."""
    width = tf.cast(tf.shape(image)[1], tf.float32)
    flip = _uniform(seed, salt=1) < probability
    image = tf.cond(flip, lambda: tf.image.flip_left_right(image), lambda: image)
    flipped = tf.stack([boxes[:, 0], width - boxes[:, 3], boxes[:, 2], width - boxes[:, 1]], axis=1)
    return image, tf.where(flip, flipped, boxes)


def crop_window(image_height, image_width, output_size: Tuple[int, int], scale):
    """Where to crop the original image so that it becomes an `output_size` crop of the image resized by
    `scale` × output_size (the paper's scale jitter). Returns the window (y, x, height, width) in original
    pixels, the image scale (output pixels per original pixel), and the window's size after resizing."""
    height = tf.cast(image_height, tf.float32)
    width = tf.cast(image_width, tf.float32)
    out_h, out_w = float(output_size[0]), float(output_size[1])
    image_scale = tf.minimum(scale * out_h / height, scale * out_w / width)
    scaled_h, scaled_w = height * image_scale, width * image_scale
    return image_scale, scaled_h, scaled_w, out_h, out_w


def scale_jitter_crop(image_height, image_width, output_size, seed, jitter_min: float, jitter_max: float):
    """The crop of one random scale jitter: window in original pixels and the image scale."""
    scale = _uniform(seed, jitter_min, jitter_max, salt=2)
    image_scale, scaled_h, scaled_w, out_h, out_w = crop_window(image_height, image_width, output_size, scale)
    offset_y = tf.floor(_uniform(seed, salt=3) * tf.maximum(scaled_h - out_h, 0.0))
    offset_x = tf.floor(_uniform(seed, salt=4) * tf.maximum(scaled_w - out_w, 0.0))
    return _window(image_height, image_width, image_scale, offset_y, offset_x, out_h, out_w)


def fit_crop(image_height, image_width, output_size):
    """Evaluation: the whole image, resized to fit `output_size` (then padded bottom and right)."""
    image_scale, _, _, out_h, out_w = crop_window(image_height, image_width, output_size, 1.0)
    return _window(image_height, image_width, image_scale, 0.0, 0.0, out_h, out_w)


def _window(image_height, image_width, image_scale, offset_y, offset_x, out_h, out_w):
    height = tf.cast(image_height, tf.float32)
    width = tf.cast(image_width, tf.float32)
    y0 = tf.minimum(tf.floor(offset_y / image_scale), height - 1)
    x0 = tf.minimum(tf.floor(offset_x / image_scale), width - 1)
    window_h = tf.maximum(tf.minimum(tf.math.ceil(out_h / image_scale), height - y0), 1.0)
    window_w = tf.maximum(tf.minimum(tf.math.ceil(out_w / image_scale), width - x0), 1.0)
    window = tf.cast(tf.stack([y0, x0, window_h, window_w]), tf.int32)
    return window, image_scale


DECODE_RATIOS = (1, 2, 4, 8)  # the reduced resolutions at which libjpeg decodes (DCT scaling)


def decode_ratio(image_scale):
    """The largest of DECODE_RATIOS at which the decoded image still has at least the output's resolution."""
    fits = [tf.cast(image_scale * ratio <= 1.0, tf.int32) for ratio in DECODE_RATIOS[1:]]
    return tf.gather(DECODE_RATIOS, tf.add_n(fits))


def resize_window(image, boxes, offset, image_scale, output_size, ratio=1):
    """Resizes `image` — the pixels of a window at `offset` (y, x) in the original image, decoded at 1/`ratio` of
    its resolution — to `image_scale` output pixels per original pixel, at most `output_size`, and moves `boxes`
    (pixels of the original image) along, clipped to the resized image.

    The image comes back as uint8: it is what the model takes, and a quarter of float32's bytes to move."""
    out_h, out_w = output_size
    pixel_scale = image_scale * tf.cast(ratio, tf.float32)  # output pixels per decoded pixel
    decoded = tf.cast(tf.shape(image)[:2], tf.float32)
    resized_h = tf.minimum(tf.cast(tf.round(decoded[0] * pixel_scale), tf.int32), out_h)
    resized_w = tf.minimum(tf.cast(tf.round(decoded[1] * pixel_scale), tf.int32), out_w)
    resized = tf.image.resize(image, [tf.maximum(resized_h, 1), tf.maximum(resized_w, 1)])
    image = tf.cast(resized + 0.5, tf.uint8)  # bilinear values stay within [0, 255]; + 0.5 rounds to nearest
    y0, x0 = tf.unstack(tf.cast(offset, tf.float32))
    boxes = (boxes - tf.stack([y0, x0, y0, x0])) * image_scale
    limits = tf.cast(tf.stack([resized_h, resized_w, resized_h, resized_w]), tf.float32)
    boxes = tf.clip_by_value(boxes, 0.0, limits)
    return image, boxes


def pad_image(image, output_size):
    """Pads `image` [h, w, C] with zeros at the bottom and right to `output_size` (ints or scalar tensors). Two
    concatenations: tf.pad takes several times longer on uint8 images."""
    out_h, out_w = output_size
    height, width, channels = tf.shape(image)[0], tf.shape(image)[1], tf.shape(image)[2]
    image = tf.concat([image, tf.zeros([height, out_w - width, channels], image.dtype)], axis=1)
    image = tf.concat([image, tf.zeros([out_h - height, out_w, channels], image.dtype)], axis=0)
    return tf.ensure_shape(image, [_static(out_h), _static(out_w), None])


def _static(size):
    return size if isinstance(size, int) else None


def stride_padded_size(height, width, output_size, stride: int):
    """eval.padding=stride: a resized image's (height, width) rounded up to multiples of `stride`, at most
    `output_size`. The network then runs on the image rather than on padding: a 640×480 image fitted into
    512×512 becomes 512×384, a quarter fewer pixels."""
    def round_up(size, limit):
        return tf.minimum((size + stride - 1) // stride * stride, limit)

    return round_up(height, output_size[0]), round_up(width, output_size[1])


def keep_boxes_with_area(boxes, *others, min_size: float = 1.0):
    """Drops boxes thinner than `min_size` pixels (e.g. cropped away), with their other fields."""
    keep = tf.logical_and(boxes[:, 2] - boxes[:, 0] >= min_size, boxes[:, 3] - boxes[:, 1] >= min_size)
    return (tf.boolean_mask(boxes, keep),) + tuple(tf.boolean_mask(o, keep) for o in others)


def grid_mask(image, seed, ratio: float = 0.6, min_period: float = 0.2, max_period: float = 0.4,
              probability: float = 0.5):
    """GridMask (Chen et al., 2020): blanks a rotated grid of squares, so that objects are learned from parts."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.cast(tf.maximum(height, width), tf.float32)
    period = side * _uniform(seed, min_period, max_period, salt=11)
    shift_y = _uniform(seed, 0.0, 1.0, salt=12) * period
    shift_x = _uniform(seed, 0.0, 1.0, salt=13) * period
    angle = _uniform(seed, 0.0, 3.14159265 / 2, salt=14)
    ys, xs = tf.meshgrid(tf.range(tf.cast(height, tf.float32)), tf.range(tf.cast(width, tf.float32)), indexing="ij")
    rotated_y = ys * tf.cos(angle) - xs * tf.sin(angle) + shift_y
    rotated_x = ys * tf.sin(angle) + xs * tf.cos(angle) + shift_x
    blank = ratio * period
    masked = tf.logical_and(tf.math.floormod(rotated_y, period) < blank, tf.math.floormod(rotated_x, period) < blank)
    apply = _uniform(seed, salt=15) < probability
    keep = tf.logical_or(tf.logical_not(apply), tf.logical_not(masked))
    return image * tf.cast(keep, image.dtype)[..., None]
