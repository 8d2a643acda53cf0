"""One image file → what a record stores: the JPEG bytes of an RGB image, and its size.

Baseline JPEGs that are already RGB are stored byte for byte (no decode/re-encode loss). Everything else that
Pillow can read (grayscale, CMYK, palette, 16-bit, PNG/GIF/BMP/TIFF/WebP, with or without alpha) is converted
to RGB and re-encoded as JPEG at quality 95; transparent pixels are flattened onto white. Every image is fully
decoded once, so truncated or corrupt files are found here rather than in training.
"""
import io
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

JPEG_QUALITY = 95
BACKGROUND = (255, 255, 255)  # what transparent pixels become
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with extra frames; decoders read its first frame

# Why an image was dropped (the keys of summary["images"]["dropped"]).
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"

_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(Exception):
    """An image that cannot go into a record; `reason` is MISSING_FILE or UNREADABLE."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class LoadedImage:
    jpeg: bytes
    width: int
    height: int
    converted: Optional[str] = None  # e.g. "PNG RGBA" when re-encoded; None when stored as it was


def load_image(path: str) -> LoadedImage:
    """Reads, fully decodes and if needed converts the image at `path`. Raises ImageError."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise ImageError(MISSING_FILE, path) from None
    except OSError as error:  # a directory, no permission, an I/O error
        raise ImageError(UNREADABLE, f"{path}: {error}") from None
    with warnings.catch_warnings():  # Pillow's warnings (large or odd images) would break the progress bar
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            if image.format in JPEG_FORMATS and image.mode == "RGB":
                return LoadedImage(data, image.width, image.height)
            rgb = to_rgb(image)
        except Exception as error:  # Pillow raises many types for bad data (OSError, SyntaxError, ValueError...)
            raise ImageError(UNREADABLE, f"{path}: {type(error).__name__}: {error}") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return LoadedImage(buffer.getvalue(), rgb.width, rgb.height, f"{image.format or 'unknown'} {image.mode}")


def to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy of `image` in any Pillow mode."""
    mode = image.mode
    if mode in _INTEGER_MODES or mode == "F":
        return Image.fromarray(_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """16/32-bit integer or float grayscale → 8 bits: 16-bit ranges are scaled down, [0, 1] floats scaled up."""
    values = values.astype(np.float64)
    if mode == "F" and values.size and values.max() <= 1.0:
        values = values * 255.0
    elif mode != "F" and values.size and values.max() > 255:
        values = values / 257.0  # 65535 → 255
    return np.clip(np.round(values), 0, 255).astype(np.uint8)
