"""Decode image bytes into fixed-size RGB arrays (pure Python, no Spark)."""

from __future__ import annotations

import io
import os
import signal
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featurize.errors import ImageDecodeError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp")
# The Pillow decoders of those extensions, and no other, whatever a file's name
# says: a TIFF, PSD or EPS named .jpg is refused, not handed to a rarer decoder.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP")

# A 100 MP photo decodes to 300 MB of RGB: well past what a 4 GB host can hold
# per task, and far beyond any real fruit photo.
DEFAULT_MAX_PIXELS = 50_000_000

WHITE = (255, 255, 255)

# Test-only fault hook: a file holding these bytes kills its Python worker as a
# crashing decoder (or the out-of-memory killer) would. Unset outside tests.
_CRASH_MARKER = os.environ.get("FRUITCLOUD_TEST_CRASH_MARKER", "").encode()


def has_image_extension(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in path else False


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white.

    Fruits-360 photos sit on a white background, so transparent pixels become
    white rather than the black that a plain ``convert("RGB")`` would give.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if values.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# Bytes per pixel of each Pillow mode while decoding, before conversion to RGB.
_MODE_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "LA": 2,
    "PA": 2,
    "La": 2,
    "RGB": 3,
    "YCbCr": 3,
    "LAB": 3,
    "HSV": 3,
    "RGBA": 4,
    "RGBa": 4,
    "RGBX": 4,
    "CMYK": 4,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
    "I": 4,
    "F": 4,
}
# Conversion to 8-bit RGB keeps up to three more full-size copies alive (a
# float64 scale of 16-bit data counts 8, RGBA compositing 4 + 4 + 3).
_CONVERSION_BYTES = {"I;16": 11, "I;16B": 11, "I;16L": 11, "I;16N": 11, "I": 11, "F": 11}
_DEFAULT_CONVERSION_BYTES = 11

# Worst case per image in a Python worker: two task slots decode at once on a
# 4 GB host that also holds two TensorFlow models (~0.6 GB each) and the JVM.
DEFAULT_MAX_DECODE_BYTES = 384 * 1024 * 1024


def decode_memory_bytes(mode: str, width: int, height: int) -> int:
    """Peak bytes that decoding and converting an image of this header is estimated to hold."""
    per_pixel = _MODE_BYTES.get(mode, 8) + _CONVERSION_BYTES.get(mode, _DEFAULT_CONVERSION_BYTES)
    return width * height * per_pixel


def _open(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)


def _check_size(image: Image.Image, size: int, *, max_pixels: int, max_decode_bytes: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height} pixels, "
            f"limit is {max_pixels} (--max-image-pixels)"
        )
    # JPEG can decode at 1/2, 1/4 or 1/8 scale for free: a big photo is
    # never fully decoded just to be shrunk to the CNN's size.
    image.draft("RGB", (size, size))
    needed = decode_memory_bytes(image.mode, *image.size)
    if needed > max_decode_bytes:
        raise ImageDecodeError(
            f"image too large to decode: {image.mode} {image.size[0]}x{image.size[1]} needs about "
            f"{needed // 2**20} MiB, limit is {max_decode_bytes // 2**20} MiB"
        )


def decode_image(
    data: bytes | None,
    size: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES,
) -> np.ndarray:
    """Return a ``(size, size, 3)`` uint8 array, or raise ImageDecodeError.

    Size limits are checked from the header, before any pixel is decoded. EXIF
    orientation is applied, so a rotated phone photo is seen upright.
    Non-square images are resized without cropping, as Keras' own loaders do.
    Whatever a malformed file makes Pillow raise becomes an ImageDecodeError
    naming the stage: one bad file must never fail the task that holds it.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if _CRASH_MARKER and _CRASH_MARKER in data:
        os.kill(os.getpid(), signal.SIGKILL)
    try:
        image = _open(data)
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from exc
    except Exception as exc:  # any parser failure is this file's fault, not the task's
        raise ImageDecodeError(f"unreadable image header: {type(exc).__name__}: {exc}") from exc
    try:
        _check_size(image, size, max_pixels=max_pixels, max_decode_bytes=max_decode_bytes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as exc:  # as above: truncated data, bogus chunks, broken EXIF
        raise ImageDecodeError(f"corrupt image data: {type(exc).__name__}: {exc}") from exc
