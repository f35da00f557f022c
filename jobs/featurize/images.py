"""Decode image bytes into fixed-size RGB arrays (pure Python, no Spark)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp")

# A 100 MP photo decodes to 300 MB of RGB: well past what a 4 GB host can hold
# per task, and far beyond any real fruit photo.
DEFAULT_MAX_PIXELS = 50_000_000

WHITE = (255, 255, 255)


class ImageDecodeError(ValueError):
    """An input file that cannot become an image; its message is user-readable."""


def image_path_glob() -> str:
    """Hadoop glob matching image extensions case-insensitively (``*.{[jJ][pP][gG],...}``)."""
    alternatives = ",".join("".join(f"[{c.lower()}{c.upper()}]" for c in ext) for ext in IMAGE_EXTENSIONS)
    return f"*.{{{alternatives}}}"


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


def decode_image(data: bytes | None, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Return a ``(size, size, 3)`` uint8 array, or raise ImageDecodeError.

    The pixel limit is checked from the header, before any pixel is decoded.
    EXIF orientation is applied, so a rotated phone photo is seen upright.
    Non-square images are resized without cropping, as Keras' own loaders do.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image too large: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height} pixels, "
            f"limit is {max_pixels} (--max-image-pixels)"
        )
    try:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free: a big photo is
        # never fully decoded just to be shrunk to 224 px.
        image.draft("RGB", (size, size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image).resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"corrupt image data: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8)
