"""Pictures of detections, for a person to look at: boxes drawn on an image (mode=infer's images and video
frames), and the grid of val images that every evaluation draws (eval/step_N/val_detections.png, and TensorBoard)
with the predicted boxes and the ground truth, so that misses and false positives show at a glance."""
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from effdet.eval.coco_metrics import image_id_of

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
TILE = 256  # pixels of one val image's square in the grid
COLUMNS = 4
DASH = 5  # pixels of one dash of a ground-truth box


def draw_detections(image: Image.Image, found: Sequence[dict], threshold: float, truth: Sequence[dict] = (),
                    scale: float = 1.0, offset: Tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Draws on `image` (in place; it is returned) a box, class name and score for each detection of `found`
    scoring at least `threshold`, and a dashed box for each ground-truth box of `truth`. Boxes are
    [xmin, ymin, xmax, ymax] in the pixels of the image they were found on; `scale` and `offset` (x, y) map them
    onto `image` when it is a resized copy."""
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))

    def placed(box):
        return [box[0] * scale + offset[0], box[1] * scale + offset[1],
                box[2] * scale + offset[0], box[3] * scale + offset[1]]

    for box in truth:
        dashed_rectangle(draw, placed(box["box"]), max(1, width - 1))
    for detection in sorted(found, key=lambda d: d["score"]):  # the best drawn last, on top
        if detection["score"] < threshold:
            continue
        colour = PALETTE[detection["class_id"] % len(PALETTE)]
        xmin, ymin, xmax, ymax = placed(detection["box"])
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
        label = f"{detection['class']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), label)
        top_y = max(0.0, ymin - (bottom - top) - 2)
        draw.rectangle([xmin, top_y, xmin + (right - left) + 4, top_y + (bottom - top) + 2], fill=colour)
        draw.text((xmin + 2, top_y), label, fill=(255, 255, 255))
    return image


def dashed_rectangle(draw: ImageDraw.ImageDraw, box: Sequence[float], width: int) -> None:
    """A rectangle of white dashes with black gaps: visible on a light and on a dark background alike."""
    xmin, ymin, xmax, ymax = box
    for start, end in (((xmin, ymin), (xmax, ymin)), ((xmax, ymin), (xmax, ymax)),
                       ((xmax, ymax), (xmin, ymax)), ((xmin, ymax), (xmin, ymin))):
        length = math.hypot(end[0] - start[0], end[1] - start[1])
        pieces = max(1, int(length // DASH))
        for i in range(pieces):
            a, b = i / pieces, (i + 1) / pieces
            point_a = (start[0] + (end[0] - start[0]) * a, start[1] + (end[1] - start[1]) * a)
            point_b = (start[0] + (end[0] - start[0]) * b, start[1] + (end[1] - start[1]) * b)
            draw.line([point_a, point_b], fill=(255, 255, 255) if i % 2 == 0 else (0, 0, 0), width=width)


@dataclass
class Tile:
    """One val image of the grid: its pixels, its detections and ground truth (boxes in its pixels), a caption."""

    image: np.ndarray  # uint8 [H, W, 3]
    found: List[dict]
    truth: List[dict]
    caption: str


def grid_size(count: int, tile: int = TILE, columns: int = COLUMNS) -> Tuple[int, int]:
    """(width, height) of the grid of `count` images."""
    across = min(columns, count)
    return across * tile, math.ceil(count / across) * tile


def detections_grid(tiles: Sequence[Tile], threshold: float, tile: int = TILE, columns: int = COLUMNS) -> Image.Image:
    """The images side by side, `columns` to a row, each fitted into a `tile`-pixel square with its boxes
    (detections at or above `threshold` in colour, ground truth dashed) and its caption."""
    grid = Image.new("RGB", grid_size(len(tiles), tile, columns), (40, 40, 40))
    draw = ImageDraw.Draw(grid)
    for index, item in enumerate(tiles):
        height, width = item.image.shape[:2]
        scale = tile / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        left, top = (index % columns) * tile, (index // columns) * tile
        offset = (left + (tile - size[0]) // 2, top + (tile - size[1]) // 2)
        grid.paste(Image.fromarray(item.image).resize(size, Image.BILINEAR), offset)
        draw_detections(grid, item.found, threshold, item.truth, scale, offset)
        right, bottom = draw.textbbox((left + 3, top + tile - 14), item.caption)[2:]
        draw.rectangle([left, top + tile - 16, right + 3, bottom + 2], fill=(0, 0, 0))
        draw.text((left + 3, top + tile - 14), item.caption, fill=(255, 255, 255))
        draw.rectangle([left, top, left + tile - 1, top + tile - 1], outline=(90, 90, 90))
    return grid


class ValPictures:
    """The grid of the first `count` val images (the same images at every evaluation, so that a person compares
    them over steps), with one evaluation's detections. `examples` yields the val split's decoded examples in
    evaluation order (`effdet.data.example.parse`'s dict); it is read once, at the first picture."""

    def __init__(self, examples: Callable[[int], Sequence[dict]], count: int, class_name: Callable[[int], str]):
        self.examples, self.count, self.class_name = examples, count, class_name
        self._images: Optional[List[Tuple[int, np.ndarray, List[dict]]]] = None

    @property
    def image_ids(self) -> List[int]:
        return [image_id for image_id, _, _ in self._chosen()]

    def _chosen(self) -> List[Tuple[int, np.ndarray, List[dict]]]:
        if self._images is None:
            self._images = []
            for example in self.examples(self.count):
                image = np.asarray(example["image"])
                height, width = image.shape[:2]
                truth = [{"box": [float(xmin) * width, float(ymin) * height, float(xmax) * width,
                                  float(ymax) * height], "class_id": int(class_id)}
                         for (ymin, xmin, ymax, xmax), class_id in zip(np.asarray(example["boxes"]),
                                                                       np.asarray(example["classes"]))]
                self._images.append((image_id_of(np.asarray(example["source_id"])), image, truth))
        return self._images

    def render(self, rows: Sequence[dict], threshold: float) -> Optional[Image.Image]:
        """The grid with these COCO result rows (one evaluation's, {image_id, category_id, bbox [x, y, w, h] in
        original pixels, score}); None when there is no val image to show."""
        chosen = self._chosen()
        if not chosen:
            return None
        wanted = {image_id for image_id, _, _ in chosen}
        by_image: Dict[int, List[dict]] = {image_id: [] for image_id in wanted}
        for row in rows:
            if row["image_id"] in wanted:
                x, y, w, h = row["bbox"]
                by_image[row["image_id"]].append({"box": [x, y, x + w, y + h], "class_id": row["category_id"],
                                                  "class": self.class_name(row["category_id"]),
                                                  "score": row["score"]})
        tiles = []
        for image_id, image, truth in chosen:
            shown = sum(d["score"] >= threshold for d in by_image[image_id])
            tiles.append(Tile(image, by_image[image_id], truth, f"{image_id}: {shown} found, {len(truth)} true"))
        return detections_grid(tiles, threshold)
