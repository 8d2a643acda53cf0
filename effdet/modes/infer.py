"""mode=infer: detections for image files, as JSON with class names and as annotated images."""
import glob
import json
import logging
import os
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, UnidentifiedImageError

from effdet.artifacts import DETECTIONS_DIR
from effdet.data.builder import build_labeler
from effdet.data.pipeline import inference_example, padding_multiple
from effdet.data.sources import build_source
from effdet.errors import ConfigError
from effdet.eval.convert import calibration_of
from effdet.eval.evaluate import detector
from effdet.model.builder import image_size_of
from effdet.model.detector import build_detector
from effdet.modes.registry import MODES

log = logging.getLogger(__name__)
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


@MODES.register("infer")
def infer(cfg: Any, run_dir: str) -> Dict[str, Any]:
    infer_cfg = cfg.infer
    if not infer_cfg.input:
        raise ConfigError("mode=infer needs infer.input: image paths or globs, comma-separated "
                          "(in a shell: \"infer.input='photos/*.jpg,extra.png'\")")
    if not infer_cfg.ckpt:
        raise ConfigError("mode=infer needs infer.ckpt: a checkpoint, a directory of checkpoints or a run dir")
    paths, unreadable = readable_images(expand_inputs(infer_cfg.input))
    for path, why in unreadable:
        log.warning("skipped %s: %s", path, why)
    if not paths:
        raise ConfigError(f"infer.input={infer_cfg.input}: no readable image"
                          + (f" ({len(unreadable)} unreadable)" if unreadable else " matches"))
    model, prefix, step = build_detector(cfg, infer_cfg.ckpt, infer_cfg.use_ema, key="infer.ckpt")

    source = build_source(cfg.data)
    labeler = build_labeler(cfg.model)
    detect = detector(model, labeler, source.num_classes, cfg.eval, calibration_of(cfg, source, labeler))
    output_dir = infer_cfg.output_dir or os.path.join(run_dir, DETECTIONS_DIR)
    os.makedirs(output_dir, exist_ok=True)
    image_size = image_size_of(cfg.model)

    multiple = padding_multiple(cfg.eval.padding, labeler)

    def prepare(path):
        return inference_example(tf.io.read_file(path), image_size, cfg.data.reduced_decode, multiple)

    # padded_batch: with eval.padding=stride the images of a batch differ in size (padded to the largest)
    batches = tf.data.Dataset.from_tensor_slices(paths).map(prepare, num_parallel_calls=tf.data.AUTOTUNE) \
        .padded_batch(infer_cfg.batch_size).prefetch(1)
    names = output_names(paths)
    written, index = [], 0
    for images, scales, sizes in batches:
        detections = {k: v.numpy() for k, v in detect(images, scales, sizes).items()}
        for b in range(images.shape[0]):
            path, name = paths[index], names[index]
            found = image_detections(detections, b, source.class_name)
            record = {"image": path, "height": int(sizes[b][0]), "width": int(sizes[b][1]), "checkpoint": prefix,
                      "step": step, "detections": found}
            with open(os.path.join(output_dir, name + ".json"), "w") as handle:
                json.dump(record, handle, indent=1)
            draw_detections(path, found, infer_cfg.draw_threshold, os.path.join(output_dir, name + ".png"))
            shown = sum(d["score"] >= infer_cfg.draw_threshold for d in found)
            print(f"{path}: {shown} detection(s) with score ≥ {infer_cfg.draw_threshold} "
                  f"({len(found)} in total) → {os.path.join(output_dir, name)}.{{json,png}}")
            written.append(name)
            index += 1
    log.info("detections for %d image(s) in %s (checkpoint %s, step %d); %d skipped", len(written), output_dir,
             prefix, step, len(unreadable))
    return {"images": len(written), "skipped": len(unreadable), "output_dir": output_dir}


def expand_inputs(spec: str) -> List[str]:
    """Comma-separated paths and globs → the files, in the order given (each glob sorted), without repeats."""
    files, seen = [], set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        matches = sorted(glob.glob(os.path.expanduser(part))) if glob.has_magic(part) else [os.path.expanduser(part)]
        for path in matches:
            if os.path.isfile(path) and path not in seen:
                seen.add(path)
                files.append(path)
            elif not os.path.exists(path):
                log.warning("infer.input: %s does not exist", path)
    return files


def readable_images(paths: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """The paths whose header is an image TensorFlow decodes; the others with the reason."""
    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.format not in ("JPEG", "PNG", "BMP", "GIF"):
                    raise UnidentifiedImageError(f"{image.format} is not one of JPEG, PNG, BMP, GIF")
                image.verify()
            good.append(path)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            bad.append((path, str(error) or type(error).__name__))
    return good, bad


def output_names(paths: List[str]) -> List[str]:
    """A file name per input: its stem, made unique with a suffix when two inputs share one."""
    names, used = [], set()
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, n = stem, 1
        while name in used:
            n += 1
            name = f"{stem}_{n}"
        used.add(name)
        names.append(name)
    return names


def image_detections(detections: Dict[str, np.ndarray], b: int, class_name: Callable[[int], str]) -> List[dict]:
    count = int(detections["num_detections"][b])
    found = []
    for d in range(count):
        ymin, xmin, ymax, xmax = (float(v) for v in detections["boxes"][b, d])
        class_id = int(detections["classes"][b, d])
        found.append({"box": [round(xmin, 2), round(ymin, 2), round(xmax, 2), round(ymax, 2)],
                      "class_id": class_id, "class": class_name(class_id),
                      "score": round(float(detections["scores"][b, d]), 5)})
    return found


def draw_detections(path: str, found: List[dict], threshold: float, output: str) -> None:
    """The image with a box, class name and score for each detection at or above `threshold`."""
    with Image.open(path) as original:
        image = original.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for detection in found:
        if detection["score"] < threshold:
            continue
        colour = PALETTE[detection["class_id"] % len(PALETTE)]
        xmin, ymin, xmax, ymax = detection["box"]
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
        label = f"{detection['class']} {detection['score']:.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), label)
        top_y = max(0.0, ymin - (bottom - top) - 2)
        draw.rectangle([xmin, top_y, xmin + (right - left) + 4, top_y + (bottom - top) + 2], fill=colour)
        draw.text((xmin + 2, top_y), label, fill=(255, 255, 255))
    image.save(output)
