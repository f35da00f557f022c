"""A corpus of malformed images, generated (never stored): mutants of valid files in every supported format.

Mutations, from a fixed seed: truncation at a random offset, bytes flipped in
the header region, a 4-byte length or size field overwritten with a bogus value
(PNG/WebP chunk sizes, BMP header sizes, GIF/JPEG dimensions), and random bytes
spliced into the body.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"jpg": "JPEG", "png": "PNG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}
BOGUS_VALUES = (b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff", b"\x00\x00\x01\x00", b"\xff\xff\x00\x00")


def valid_images(seed: int = 0) -> dict[str, bytes]:
    """One small valid file per format, with texture so that every codec writes real data."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    sources = {}
    for extension, fmt in FORMATS.items():
        image = Image.fromarray(pixels)
        if fmt == "GIF":
            image = image.convert("P")
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        sources[extension] = buffer.getvalue()
    return sources


def mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return data[: rng.randrange(1, len(data))]
    mutant = bytearray(data)
    if kind == 1:
        for _ in range(rng.randint(1, 4)):
            mutant[rng.randrange(min(64, len(mutant)))] ^= 1 << rng.randrange(8)
    elif kind == 2:
        offset = rng.randrange(min(48, len(mutant) - 4))
        mutant[offset : offset + 4] = rng.choice(BOGUS_VALUES)
    else:
        offset = rng.randrange(len(mutant))
        mutant[offset:offset] = rng.randbytes(rng.randint(1, 32))
    return bytes(mutant)


def write_corpus(directory: Path, per_format: int = 200, seed: int = 1234) -> list[Path]:
    """``per_format`` mutants of each format under ``directory/fuzz_<ext>/``; returns their paths."""
    rng = random.Random(seed)
    paths = []
    for extension, data in valid_images().items():
        folder = directory / f"fuzz_{extension}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_format):
            path = folder / f"mutant_{index:03d}.{extension}"
            path.write_bytes(mutate(data, rng))
            paths.append(path)
    return paths
