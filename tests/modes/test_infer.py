"""mode=infer on videos and directories: a frame's detections are that frame's, in its pixels, in order, none
dropped; the annotated video has every frame; what is neither an image nor a video is skipped with the reason.

An untrained network finds nothing worth following, so the network here is an "oracle" engine: it finds the
bright pixels of each prepared model input and answers with the anchor that best fits their box, encoded as a
trained head would. Everything after the network (post-processing back to frame pixels, the JSONL, the drawing,
the encoding) is the real path."""
import json
import logging
import os
import wave

import av
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from effdet.data import video as video_module
from effdet.data.builder import build_labeler
from effdet.data.targets import pairwise_iou
from effdet.errors import ConfigError
from effdet.eval.engines import ENGINES
from effdet.model import box_coder
from effdet.model.builder import build_model
from effdet.model.ema import build_ema
from effdet.modes import MODES
from effdet.modes.infer import annotate_video, classify_inputs
from tests.conftest import compose

TINY = ["model=efficientdet-lite0", "data=shapes", "model.image_size=128", "model.fpn_num_filters=16",
        "model.fpn_cell_repeats=1", "model.box_class_repeats=1"]
WIDTH, HEIGHT = 96, 64  # fitted into the 128 input at 4/3 scale: a box left in input pixels is off by a third
SHAPE = (20, 14)  # the moving rectangle's width, height
BACKGROUND, BRIGHT = (25, 25, 35), (235, 235, 235)
DRAWN = (60, 180, 75)  # pictures.PALETTE[1]: the colour of class id 1's boxes


def shape_box(index):
    """[xmin, ymin, xmax, ymax] in frame pixels of the rectangle in frame `index`: 3 px right, 1 px down a frame."""
    x, y = 8 + 3 * index, 10 + index
    return [x, y, x + SHAPE[0], y + SHAPE[1]]


def shape_frame(index, width=WIDTH, height=HEIGHT):
    image = Image.new("RGB", (width, height), BACKGROUND)
    xmin, ymin, xmax, ymax = shape_box(index)
    ImageDraw.Draw(image).rectangle([xmin, ymin, xmax - 1, ymax - 1], fill=BRIGHT)  # PIL's corners are inclusive
    return np.asarray(image)


def write_video(path, frames, rate=25):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return str(path)


def decoded_frames(path):
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def oracle_engine(labeler):
    """An engine whose network scores, in each image, the anchor best overlapping the box of its bright pixels
    (in model-input pixels) high for the first class, with that box's codes against it; every other low."""
    def factory(model, num_classes, image_size, eval_cfg=None, calibration=None):
        anchors = labeler.anchors_at(image_size)

        def network(images):
            images = np.asarray(images)
            logits = np.full([images.shape[0], anchors.shape[0], num_classes], -12.0, np.float32)
            codes = np.zeros([images.shape[0], anchors.shape[0], 4], np.float32)
            for b, pixels in enumerate(images):
                rows, columns = np.nonzero(pixels.max(axis=-1) > 128)
                if rows.size == 0:
                    continue
                box = tf.constant([[rows.min(), columns.min(), rows.max() + 1, columns.max() + 1]], tf.float32)
                best = int(tf.argmax(pairwise_iou(box, anchors)[0]))
                logits[b, best, 0] = 12.0
                codes[b] = box_coder.encode(tf.tile(box, [anchors.shape[0], 1]), anchors).numpy()
            return tf.constant(logits), tf.constant(codes)

        return network

    return factory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A run dir with a checkpoint of the tiny model laid out as the trainer writes it (its weights play no part)."""
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose(TINY)
    model = build_model(cfg.model, cfg.data.num_classes)
    checkpoint = tf.train.Checkpoint(model=model, ema=build_ema(model, 0.9), step=tf.Variable(3, dtype=tf.int64))
    tf.train.CheckpointManager(checkpoint, str(run_dir / "checkpoints"), 1, checkpoint_name="ckpt").save(3)
    return str(run_dir)


@pytest.fixture
def oracle():
    with ENGINES.temporarily("oracle", oracle_engine(build_labeler(compose(TINY).model))):
        yield "oracle"
    assert "oracle" not in ENGINES


def run_infer(inputs, checkpoint, run_dir, *overrides):
    cfg = compose([*TINY, "mode=infer", f"infer.input='{inputs}'", f"infer.ckpt={checkpoint}", "eval.engine=oracle",
                   *overrides])
    return MODES.get("infer")(cfg, str(run_dir))


def read_lines(path):
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def test_a_videos_boxes_follow_its_moving_shape_frame_by_frame(tmp_path, checkpoint, oracle):
    count = 13  # batches of 5, 5 and 3: the last one short
    clip = write_video(tmp_path / "clip.mp4", [shape_frame(i) for i in range(count)])
    result = run_infer(clip, checkpoint, tmp_path / "run", "infer.batch_size=5")
    out = tmp_path / "run" / "detections"
    assert result == {"images": 0, "videos": 1, "frames": count, "skipped": 0, "output_dir": str(out)}
    assert sorted(os.listdir(out)) == ["clip.annotated.mp4", "clip.jsonl"]

    lines = read_lines(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == list(range(count))
    assert [line["time"] for line in lines] == pytest.approx([i / 25 for i in range(count)])
    assert {(line["width"], line["height"]) for line in lines} == {(WIDTH, HEIGHT)}
    lefts = []
    for index, line in enumerate(lines):
        best = max(line["detections"], key=lambda d: d["score"])
        assert (best["class_id"], best["class"]) == (1, "circle") and best["score"] > 0.99
        assert best["box"] == pytest.approx(shape_box(index), abs=1.5), f"frame {index}"  # frame pixels
        lefts.append(best["box"][0])
    assert np.diff(lefts) == pytest.approx(np.full(count - 1, 3.0), abs=1.0)  # moving as the shape moves

    annotated = decoded_frames(out / "clip.annotated.mp4")
    assert len(annotated) == count and annotated[0].shape == (HEIGHT, WIDTH, 3)
    for index in (0, count - 1):  # the box is drawn along the shape's left edge, where it is in that frame
        xmin, ymin, _, ymax = shape_box(index)
        edge = annotated[index][ymin + 2:ymax - 2, max(xmin - 2, 0):xmin + 2].reshape(-1, 3).astype(int)
        assert (np.abs(edge - DRAWN).max(axis=1) < 60).any(), f"frame {index}"
    with av.open(str(out / "clip.annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate) == ("h264", 25)
        assert not container.streams.audio


def test_a_directory_gives_its_images_and_videos_and_skips_the_rest(tmp_path, checkpoint, oracle, caplog):
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(shape_frame(2)).save(folder / "clip.png")
    write_video(folder / "clip.mp4", [shape_frame(i) for i in range(4)])
    (folder / "notes.txt").write_text("not a picture")
    Image.fromarray(shape_frame(0)).save(folder / "nested" / "deeper.png")  # not entered
    with caplog.at_level(logging.WARNING):
        result = run_infer(folder, checkpoint, tmp_path / "run")
    out = tmp_path / "run" / "detections"
    assert result == {"images": 1, "videos": 1, "frames": 4, "skipped": 1, "output_dir": str(out)}
    # sorted, clip.mp4 comes first and keeps the name; the image gets the suffix
    assert sorted(os.listdir(out)) == ["clip.annotated.mp4", "clip.jsonl", "clip_2.json", "clip_2.png"]
    assert len(read_lines(out / "clip.jsonl")) == 4 and len(decoded_frames(out / "clip.annotated.mp4")) == 4
    image = json.loads((out / "clip_2.json").read_text())
    assert image["detections"][0]["box"] == pytest.approx(shape_box(2), abs=1.5)
    assert f"skipped {folder / 'notes.txt'}: neither an image" in caplog.text


def test_files_neither_image_nor_video_are_skipped_with_the_reason(tmp_path):
    (tmp_path / "notes.jpg").write_text("a text file with an image's name")  # FFmpeg opens it, and decodes nothing
    with wave.open(str(tmp_path / "sound.wav"), "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(8000)
        sound.writeframes(b"\0\0" * 800)
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.webp")
    Image.new("RGB", (8, 8)).save(tmp_path / "picture.gif")
    clip = write_video(tmp_path / "clip.mkv", [shape_frame(i) for i in range(2)])
    paths = [str(tmp_path / name) for name in ("notes.jpg", "sound.wav", "picture.webp", "picture.gif")] + [clip]
    kinds, skipped = classify_inputs(paths)
    assert kinds == {paths[3]: "image", clip: "video"}
    reasons = dict(skipped)
    assert reasons[paths[0]].startswith("neither an image (JPEG, PNG, BMP, GIF) nor a video FFmpeg decodes: ")
    assert reasons[paths[1]].endswith("no video stream (its streams: audio)")
    assert reasons[paths[2]] == "WEBP is not one of JPEG, PNG, BMP, GIF"  # a picture, not a one-frame video


def test_a_directory_with_nothing_readable_is_reported(tmp_path, caplog):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "readme.txt").write_text("nothing to see")
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError, match="no readable image or video"):
        MODES.get("infer")(compose([*TINY, "mode=infer", f"infer.input={tmp_path / 'inputs'}", "infer.ckpt=none"]),
                       str(tmp_path))
    assert f"directory {tmp_path / 'inputs'} has no image or video (1 file(s) skipped)" in caplog.text


def test_a_video_that_stops_decoding_keeps_its_frames_and_the_others_go_on(tmp_path, checkpoint, oracle, caplog,
                                                                         monkeypatch):
    broken = write_video(tmp_path / "broken.mp4", [shape_frame(i) for i in range(8)])
    fine = write_video(tmp_path / "fine.mp4", [shape_frame(i) for i in range(3)])
    decoded = video_module.VideoReader._decoded

    def failing(self):
        for index, frame in enumerate(decoded(self)):
            if self.path == broken and index == 5:
                raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
            yield frame

    monkeypatch.setattr(video_module.VideoReader, "_decoded", failing)
    with caplog.at_level(logging.WARNING):
        result = run_infer(f"{broken},{fine}", checkpoint, tmp_path / "run", "infer.batch_size=2")
    out = tmp_path / "run" / "detections"
    assert (result["videos"], result["frames"]) == (2, 5 + 3)
    assert f"{broken}: decoding stopped at frame 5: Invalid data found when processing input" in caplog.text
    assert [line["frame"] for line in read_lines(out / "broken.jsonl")] == list(range(5))
    assert len(decoded_frames(out / "broken.annotated.mp4")) == 5  # finished: it plays
    assert len(read_lines(out / "fine.jsonl")) == len(decoded_frames(out / "fine.annotated.mp4")) == 3


def test_a_frame_size_change_starts_a_new_batch_and_odd_sizes_are_padded_even(tmp_path, monkeypatch):
    clip = write_video(tmp_path / "clip.mp4", [shape_frame(0)])
    sizes = [(33, 21)] * 3 + [(40, 30)] * 2  # (width, height) of the frames the stream "decodes"

    def resized(self):
        for width, height in sizes:
            yield av.VideoFrame.from_ndarray(np.full((height, width, 3), 90, np.uint8), format="rgb24")

    monkeypatch.setattr(video_module.VideoReader, "_decoded", resized)
    batches = []

    def detect_frames(frames):
        batches.append(frames.shape)
        return [[] for _ in frames]

    assert annotate_video(clip, str(tmp_path / "out"), detect_frames, batch_size=2, threshold=0.5) == 5
    assert batches == [(2, 21, 33, 3), (1, 21, 33, 3), (2, 30, 40, 3)]
    lines = read_lines(tmp_path / "out.jsonl")
    assert [(line["width"], line["height"]) for line in lines] == sizes
    assert [line["time"] for line in lines] == pytest.approx([i / 25 for i in range(5)])  # no timestamps: i / fps
    written = decoded_frames(tmp_path / "out.annotated.mp4")
    assert [frame.shape for frame in written] == [(22, 34, 3)] * 5  # the first size, made even


def test_without_libx264_the_video_is_mpeg4(tmp_path, monkeypatch):
    monkeypatch.setattr(video_module, "ENCODERS", ("no-such-encoder", "mpeg4"))
    writer = video_module.VideoWriter(str(tmp_path / "out.mp4"), None, WIDTH, HEIGHT)
    for index in range(3):
        writer.write(shape_frame(index))
    writer.close()
    with av.open(str(tmp_path / "out.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.average_rate) == ("mpeg4", 25)  # 25: the rate when none is known
    assert len(decoded_frames(tmp_path / "out.mp4")) == 3
