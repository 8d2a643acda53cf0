"""Anchor boxes: at every position of levels min..max, `num_scales` octave scales × the aspect ratios."""
from typing import Sequence, Tuple

import numpy as np

from effdet.model.efficientdet import feature_sizes


def anchor_boxes(image_size: Tuple[int, int], min_level: int, max_level: int, num_scales: int = 3,
                 aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5), anchor_scale: float = 4.0) -> np.ndarray:
    """All anchors as [N, 4] (ymin, xmin, ymax, xmax) in pixels, ordered level, position (row-major),
    then scale, then aspect ratio — the order of the heads' outputs once flattened."""
    sizes = feature_sizes(image_size, max_level)
    per_level = []
    for level in range(min_level, max_level + 1):
        stride_y = image_size[0] / sizes[level][0]
        stride_x = image_size[1] / sizes[level][1]
        centers_y = np.arange(stride_y / 2, image_size[0], stride_y)
        centers_x = np.arange(stride_x / 2, image_size[1], stride_x)
        grid_x, grid_y = np.meshgrid(centers_x, centers_y)
        grid_y, grid_x = grid_y.reshape(-1, 1), grid_x.reshape(-1, 1)
        half_sizes = []
        for octave in range(num_scales):
            for aspect in aspect_ratios:
                # aspect = width / height, with the area of the square anchor
                aspect_x = np.sqrt(aspect)
                base = anchor_scale * 2 ** (octave / num_scales)
                half_sizes.append((base * stride_y / aspect_x / 2, base * stride_x * aspect_x / 2))
        half_y = np.array([h for h, _ in half_sizes])[None, :]
        half_x = np.array([w for _, w in half_sizes])[None, :]
        boxes = np.stack([grid_y - half_y, grid_x - half_x, grid_y + half_y, grid_x + half_x], axis=-1)
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level, axis=0).astype(np.float32)


def num_anchors_per_level(image_size: Tuple[int, int], min_level: int, max_level: int,
                          anchors_per_location: int) -> dict:
    sizes = feature_sizes(image_size, max_level)
    return {level: sizes[level][0] * sizes[level][1] * anchors_per_location
            for level in range(min_level, max_level + 1)}
