"""mode=show_data: what the model will be fed — the dataset's summary, the input speed, and a picture of
augmented training examples with the boxes their anchor targets encode."""
import json
import os
import time
from typing import Any, Dict, List

import numpy as np
from PIL import Image, ImageDraw

from effdet.artifacts import DATA_SAMPLES, DATA_SUMMARY
from effdet.data.builder import build_input, build_labeler
from effdet.data.sources import build_source
from effdet.data.targets import flatten_levels
from effdet.model import box_coder
from effdet.modes.registry import MODES

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


@MODES.register("show_data")
def show_data(cfg: Any, run_dir: str) -> Dict[str, Any]:
    source = build_source(cfg.data)
    labeler = build_labeler(cfg.model)
    batches = iter(build_input(cfg.data, source, labeler, "train").train(cfg.trainer.batch_size))
    images, targets = next(batches)
    start = time.perf_counter()
    timed = 5
    for _ in range(timed):
        next(batches)
    images_per_second = timed * cfg.trainer.batch_size / (time.perf_counter() - start)
    examples = decoded_examples(images, targets, labeler, cfg.model.min_level, cfg.model.max_level)
    picture = os.path.join(run_dir, DATA_SAMPLES)
    draw_grid(examples, source.class_name, picture)
    summary = {
        "data": source.name, "num_classes": source.num_classes,
        "train_file_pattern": source.train_file_pattern, "val_file_pattern": source.val_file_pattern,
        "num_train_examples": source.num_train_examples, "label_map": source.label_map,
        "image_size": list(labeler.image_size), "anchors": int(labeler.anchors.shape[0]),
        "mean_positive_anchors": float(np.mean(targets["num_positives"])),
        "input_images_per_second": round(images_per_second, 1), "picture": picture,
    }
    print("\n".join(f"{key:<24}{value}" for key, value in summary.items() if key != "label_map"))
    print(f"{'classes':<24}{', '.join(f'{i}:{n}' for i, n in sorted(source.label_map.items()))}")
    with open(os.path.join(run_dir, DATA_SUMMARY), "w") as handle:
        json.dump({k: v for k, v in summary.items()}, handle, indent=2, default=str)
    return summary


def decoded_examples(images, targets, labeler, min_level, max_level) -> List[dict]:
    """Each example's image with the distinct boxes and classes its positive anchors encode."""
    classes = flatten_levels(targets, "cls_targets", min_level, max_level, 1)[..., 0].numpy()
    boxes = box_coder.decode(flatten_levels(targets, "box_targets", min_level, max_level, 4),
                             labeler.anchors[None]).numpy()
    examples = []
    for image, image_classes, image_boxes in zip(images.numpy(), classes, boxes):
        positive = image_classes >= 0
        found = {}
        for box, label in zip(np.round(image_boxes[positive], 1), image_classes[positive]):
            found[tuple(box)] = int(label) + 1  # back to dataset ids
        examples.append({"image": image, "objects": sorted(found.items())})
    return examples


def draw_grid(examples: List[dict], class_name, path: str, columns: int = 4) -> None:
    tiles = []
    for example in examples:
        tile = Image.fromarray(np.clip(example["image"], 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(tile)
        for (ymin, xmin, ymax, xmax), label in example["objects"]:
            colour = PALETTE[label % len(PALETTE)]
            draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=2)
            draw.text((xmin + 2, ymin + 1), class_name(label), fill=colour)
        tiles.append(tile)
    width, height = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    grid = Image.new("RGB", (columns * width, rows * height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * width, (i // columns) * height))
    grid.save(path)
