"""Video files for mode=infer, through PyAV (FFmpeg inside its wheel): what can be decoded, the decoded frames as
RGB arrays with their times, and an annotated copy written as H.264 (MPEG-4 part 2 when the wheel lacks libx264)."""
import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Optional

import av
import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

ENCODERS = ("libx264", "mpeg4")  # the first this FFmpeg build has is used
DEFAULT_RATE = Fraction(25)  # frames per second written, and assumed for times, when a stream states none
# mpeg4 refuses time bases with a denominator above 2^16 - 1; libx264 does not mind a rate rounded so finely
MAX_RATE_DENOMINATOR = 65535


def video_problem(path: str) -> Optional[str]:
    """None when FFmpeg opens `path`, finds a video stream in it and decodes its first frame; else why not. The
    frame matters: FFmpeg opens anything named .jpg as a one-picture "video" and only decoding it tells."""
    try:
        with av.open(path) as container:
            if not container.streams.video:
                kinds = sorted({stream.type for stream in container.streams}) or ["none"]
                return f"no video stream (its streams: {', '.join(kinds)})"
            stream = container.streams.video[0]
            for _ in container.decode(stream):
                return None
            return "its video stream has no frame"
    except (av.FFmpegError, OSError, ValueError) as error:
        return _reason(error)


def _reason(error: Exception) -> str:
    # PyAV's message repeats the errno and the path, which the caller already names
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class VideoError(Exception):
    """A video that FFmpeg cannot open (any more: it did when the inputs were sorted out)."""


@dataclass
class Frame:
    index: int  # in decoding order, from 0
    time: float  # seconds from the start of the stream
    pixels: np.ndarray  # uint8 [H, W, 3] RGB


class VideoReader:
    """The frames of a file's first video stream, in order. Decoding that fails part-way ends the iteration and
    leaves the reason in `error` (the frames before it were yielded), so that a damaged file still gives what
    it has."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.container = av.open(path)
        except (av.FFmpegError, OSError, ValueError) as error:
            raise VideoError(_reason(error)) from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError("no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding: several times faster on HD video
        self.rate: Optional[Fraction] = self.stream.average_rate or None
        self.total: Optional[int] = self.stream.frames or None  # what the container announces, if it does
        self.error: Optional[str] = None
        self.decoded = 0

    @property
    def fps(self) -> float:
        return float(self.rate or DEFAULT_RATE)

    def _decoded(self) -> Iterator[av.VideoFrame]:
        return self.container.decode(self.stream)

    def __iter__(self) -> Iterator[Frame]:
        time_base, start = self.stream.time_base, self.stream.start_time or 0
        try:
            for decoded in self._decoded():
                if decoded.pts is None or time_base is None:
                    time = self.decoded / self.fps
                else:
                    time = float((decoded.pts - start) * time_base)
                frame = Frame(self.decoded, round(time, 6), decoded.to_ndarray(format="rgb24"))
                self.decoded += 1
                yield frame
        except (av.FFmpegError, OSError) as error:
            self.error = _reason(error)

    def close(self) -> None:
        self.container.close()


def video_encoder() -> str:
    """The first of ENCODERS this FFmpeg build has."""
    for name in ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except av.codec.codec.UnknownCodecError:
            continue
    raise RuntimeError(f"this FFmpeg build (PyAV {av.__version__}) has none of the video encoders "
                       f"{', '.join(ENCODERS)}: reinstall the av wheel pinned in setup.cfg")


class VideoWriter:
    """Frames of one size (that of the first written) → an MP4 file in yuv420p at `rate` frames per second.
    yuv420p halves the chroma resolution, so odd sizes are padded by a black column or row on the right or
    bottom; a frame of another size (a stream that changes size) is scaled to the first's."""

    def __init__(self, path: str, rate: Optional[Fraction], width: int, height: int):
        self.path = path
        self.width, self.height = width, height
        self.codec = video_encoder()
        if self.codec != ENCODERS[0]:
            log.warning("%s: this FFmpeg build has no %s encoder, writing %s instead", path, ENCODERS[0], self.codec)
        rate = Fraction(rate or DEFAULT_RATE).limit_denominator(MAX_RATE_DENOMINATOR)
        self.container = av.open(path, "w")
        try:
            self.stream = self.container.add_stream(self.codec, rate=rate)
            self.stream.width, self.stream.height = width + width % 2, height + height % 2
            self.stream.pix_fmt = "yuv420p"
        except BaseException:
            self.container.close()
            raise
        self.written = 0

    def write(self, pixels: np.ndarray) -> None:
        """uint8 [H, W, 3] RGB."""
        if pixels.shape[:2] != (self.height, self.width):
            pixels = np.asarray(Image.fromarray(pixels).resize((self.width, self.height), Image.BILINEAR))
        if self.width % 2 or self.height % 2:
            pixels = np.pad(pixels, [[0, self.height % 2], [0, self.width % 2], [0, 0]])
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.written += 1

    def close(self) -> None:
        """Drains the encoder and finishes the file (an MP4 without its index at the end does not play)."""
        try:
            for packet in self.stream.encode():
                self.container.mux(packet)
        finally:
            self.container.close()
