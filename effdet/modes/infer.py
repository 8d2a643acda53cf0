"""mode=infer: detections for image and video files (or the files of directories), as JSON with class names and
as annotated images and videos."""
import contextlib
import glob
import json
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from effdet.artifacts import DETECTIONS_DIR
from effdet.data.builder import build_labeler
from effdet.data.pipeline import inference_example, padding_multiple, prepare_images
from effdet.data.sources import build_source
from effdet.errors import ConfigError
from effdet.eval.convert import calibration_of
from effdet.eval.evaluate import detector
from effdet.eval.pictures import draw_detections
from effdet.model.builder import image_size_of
from effdet.model.detector import build_detector
from effdet.modes.registry import MODES

log = logging.getLogger(__name__)
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF")  # what TensorFlow's decode_image reads
MOVIE_FORMATS = ("MPEG", "FLI")  # movies PIL recognises and TensorFlow does not read: videos, if FFmpeg decodes them
ANNOTATED_VIDEO = ".annotated.mp4"  # beside <name>.jsonl, one line per frame


@MODES.register("infer")
def infer(cfg: Any, run_dir: str) -> Dict[str, Any]:
    infer_cfg = cfg.infer
    if not infer_cfg.input:
        raise ConfigError("mode=infer needs infer.input: image or video paths, globs or directories, comma-separated "
                          "(in a shell: \"infer.input='photos/*.jpg,clip.mp4,more/'\")")
    if not infer_cfg.ckpt:
        raise ConfigError("mode=infer needs infer.ckpt: a checkpoint, a directory of checkpoints or a run dir")
    files, directories = expand_inputs(infer_cfg.input)
    kinds, unreadable = classify_inputs(files)
    for path, why in unreadable:
        log.warning("skipped %s: %s", path, why)
    for directory, members in directories.items():
        if not any(path in kinds for path in members):
            log.warning("infer.input: directory %s has no image or video%s", directory,
                        f" ({len(members)} file(s) skipped)" if members else " (it holds no file)")
    if not kinds:
        raise ConfigError(f"infer.input={infer_cfg.input}: no readable image or video"
                          + (f" ({len(unreadable)} unreadable)" if unreadable else " matches"))
    model, prefix, step = build_detector(cfg, infer_cfg.ckpt, infer_cfg.use_ema, key="infer.ckpt")

    source = build_source(cfg.data)
    labeler = build_labeler(cfg.model)
    detect = detector(model, labeler, source.num_classes, cfg.eval, calibration_of(cfg, source, labeler))
    output_dir = infer_cfg.output_dir or os.path.join(run_dir, DETECTIONS_DIR)
    os.makedirs(output_dir, exist_ok=True)
    image_size = image_size_of(cfg.model)
    multiple = padding_multiple(cfg.eval.padding, labeler)
    # one name space for images and videos, in the order given, so that no two inputs write the same file
    name_of = dict(zip(kinds, output_names(list(kinds))))
    paths = [path for path, kind in kinds.items() if kind == "image"]
    videos = [path for path, kind in kinds.items() if kind == "video"]

    def prepare(path):
        return inference_example(tf.io.read_file(path), image_size, cfg.data.reduced_decode, multiple)

    written, index = [], 0
    if paths:
        # padded_batch: with eval.padding=stride the images of a batch differ in size (padded to the largest)
        batches = tf.data.Dataset.from_tensor_slices(paths).map(prepare, num_parallel_calls=tf.data.AUTOTUNE) \
            .padded_batch(infer_cfg.batch_size).prefetch(1)
        for images, scales, sizes in batches:
            detections = {k: v.numpy() for k, v in detect(images, scales, sizes).items()}
            for b in range(images.shape[0]):
                path = paths[index]
                name = name_of[path]
                found = image_detections(detections, b, source.class_name)
                record = {"image": path, "height": int(sizes[b][0]), "width": int(sizes[b][1]), "checkpoint": prefix,
                          "step": step, "detections": found}
                with open(os.path.join(output_dir, name + ".json"), "w") as handle:
                    json.dump(record, handle, indent=1)
                annotate_image(path, found, infer_cfg.draw_threshold, os.path.join(output_dir, name + ".png"))
                shown = sum(d["score"] >= infer_cfg.draw_threshold for d in found)
                print(f"{path}: {shown} detection(s) with score ≥ {infer_cfg.draw_threshold} "
                      f"({len(found)} in total) → {os.path.join(output_dir, name)}.{{json,png}}")
                written.append(name)
                index += 1

    def detect_frames(frames: np.ndarray):
        pixels, scales, sizes = prepare_images(tf.convert_to_tensor(frames), image_size, multiple)
        detections = {k: v.numpy() for k, v in detect(pixels, scales, sizes).items()}
        return [image_detections(detections, b, source.class_name) for b in range(frames.shape[0])]

    frames, done = 0, []
    for path in videos:
        count = annotate_video(path, os.path.join(output_dir, name_of[path]), detect_frames, infer_cfg.batch_size,
                               infer_cfg.draw_threshold)
        if count is None:  # it opened when the inputs were sorted out, not now: reported as skipped
            unreadable.append((path, "does not open"))
        else:
            frames += count
            done.append(path)
    log.info("detections for %d image(s) and %d video(s) (%d frames) in %s (checkpoint %s, step %d); %d skipped",
             len(written), len(done), frames, output_dir, prefix, step, len(unreadable))
    return {"images": len(written), "videos": len(done), "frames": frames, "skipped": len(unreadable),
            "output_dir": output_dir}


def expand_inputs(spec: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """Comma-separated paths, globs and directories → the files, in the order given (each glob's matches and each
    directory's files sorted), without repeats; and each directory named → its files. Directories are not entered
    recursively, neither those inside a named one nor those a glob matches."""
    files, seen, directories = [], set(), {}

    def add(path):
        if path not in seen:
            seen.add(path)
            files.append(path)

    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        matches = sorted(glob.glob(os.path.expanduser(part))) if glob.has_magic(part) else [os.path.expanduser(part)]
        for path in matches:
            if os.path.isfile(path):
                add(path)
            elif os.path.isdir(path) and not glob.has_magic(part):
                # hidden files (.DS_Store, editors' swap files) are never pictures someone meant to give
                members = [os.path.join(path, entry) for entry in sorted(os.listdir(path)) if not entry.startswith(".")]
                directories[path] = [member for member in members if os.path.isfile(member)]
                for member in directories[path]:
                    add(member)
            elif not os.path.exists(path):
                log.warning("infer.input: %s does not exist", path)
    return files, directories


def classify_inputs(paths: List[str]) -> Tuple[Dict[str, str], List[Tuple[str, str]]]:
    """Path → "image" (a JPEG, PNG, BMP or GIF header, which TensorFlow decodes) or "video" (FFmpeg decodes a
    video stream of it), in the order given; and the other paths with the reason."""
    from effdet.data.video import video_problem  # FFmpeg's libraries are loaded by infer jobs alone

    kinds, bad = {}, []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.format in MOVIE_FORMATS:
                    raise UnidentifiedImageError(image.format)
                if image.format not in IMAGE_FORMATS:
                    # a picture TensorFlow cannot decode; FFmpeg would make it a one-frame video, not what is meant
                    raise OSError(f"{image.format} is not one of {', '.join(IMAGE_FORMATS)}")
                image.verify()
            kinds[path] = "image"
        except UnidentifiedImageError:
            why = video_problem(path)
            if why is None:
                kinds[path] = "video"
            else:
                bad.append((path, f"neither an image ({', '.join(IMAGE_FORMATS)}) nor a video FFmpeg decodes: {why}"))
        except (OSError, SyntaxError) as error:
            bad.append((path, str(error) or type(error).__name__))
    return kinds, bad


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


def annotate_image(path: str, found: List[dict], threshold: float, output: str) -> None:
    """The image of `path` with its detections scoring at least `threshold` drawn on it, saved as `output`."""
    with Image.open(path) as original:
        image = original.convert("RGB")
    draw_detections(image, found, threshold).save(output)


def annotate_video(path: str, output: str, detect_frames: Callable[[np.ndarray], List[List[dict]]], batch_size: int,
                   threshold: float) -> Optional[int]:
    """Detections on every frame of the video `path`: `output`.jsonl (a line per frame) and `output`.annotated.mp4
    (every frame with its detections scoring at least `threshold` drawn). `detect_frames`: same-sized frames
    [B, H, W, 3] → their detections. Returns the frames done (None: the file does not open); a decoding error
    ends the video there, keeping what was written."""
    from tqdm import tqdm

    from effdet.data.video import VideoError, VideoReader, VideoWriter

    started = time.perf_counter()
    try:
        video = VideoReader(path)
    except VideoError as error:
        log.warning("skipped %s: %s", path, error)
        return None
    pending, shown, writer = [], 0, None

    def flush():
        nonlocal shown
        for frame, found in zip(pending, detect_frames(np.stack([frame.pixels for frame in pending]))):
            height, width = frame.pixels.shape[:2]
            lines.write(json.dumps({"frame": frame.index, "time": frame.time, "width": width, "height": height,
                                    "detections": found}) + "\n")
            writer.write(np.asarray(draw_detections(Image.fromarray(frame.pixels), found, threshold)))
            shown += sum(d["score"] >= threshold for d in found)
        lines.flush()  # what is done stays done if a later frame brings the job down
        bar.update(len(pending))
        pending.clear()

    # closed last to first: the encoder is drained (the MP4 gets its index, playable) even when a frame fails
    with contextlib.ExitStack() as stack:
        stack.callback(video.close)
        bar = stack.enter_context(tqdm(total=video.total, desc=os.path.basename(path), unit="frame",
                                       dynamic_ncols=True, disable=None))
        lines = stack.enter_context(open(output + ".jsonl", "w"))
        for frame in video:
            if writer is None:
                height, width = frame.pixels.shape[:2]
                writer = VideoWriter(output + ANNOTATED_VIDEO, video.rate, width, height)
                stack.callback(writer.close)
            # a batch is of one frame size: a stream that changes size starts a new one
            if pending and (len(pending) == batch_size or frame.pixels.shape != pending[0].pixels.shape):
                flush()
            pending.append(frame)
        if pending:
            flush()
    seconds = time.perf_counter() - started
    if video.error is not None:
        log.warning("%s: decoding stopped at frame %d: %s; the %d frame(s) before it are written", path,
                    video.decoded, video.error, video.decoded)
    elif video.total is not None and video.decoded < video.total:
        log.warning("%s: %d frame(s) decoded of the %d its container announces (a truncated file?)", path,
                    video.decoded, video.total)
    outputs = f"{output}.{{{ANNOTATED_VIDEO[1:]},jsonl}}"
    log.info("%s: %d frames in %.1f s (%.1f frames/s) → %s", path, video.decoded, seconds,
             video.decoded / max(seconds, 1e-9), outputs)
    print(f"{path}: {video.decoded} frame(s), {shown} detection(s) with score ≥ {threshold} → {outputs}")
    return video.decoded
