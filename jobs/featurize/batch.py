"""Per-batch featurization, the body of the pandas UDF, runnable without Spark."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featurize.errors import ImageDecodeError
from featurize.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, decode_image
from featurize.model import BATCH_SIZES, Extractor


@dataclass(frozen=True)
class FeaturizeSettings:
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = BATCH_SIZES["tflite"]
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    tf_threads: int = 1
    runtime: str = "tflite"


@dataclass
class BatchTimings:
    decode_seconds: float = 0.0
    cnn_seconds: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """One image's result: its features, or the stage and reason it failed."""

    features: np.ndarray | None = None
    stage: str | None = None
    reason: str | None = None
    # The AWS error code of a failed read, and whether a rerun tries this image again (errors.RecordedError).
    code: str | None = None
    retryable: bool | None = None


def featurize_contents(
    contents: Sequence[bytes],
    extract: Extractor,
    settings: FeaturizeSettings,
    *,
    timings: BatchTimings | None = None,
) -> list[Outcome]:
    """Decode image bytes and run the CNN, in chunks of ``batch_size``, on those that decode.

    One Outcome per input, in order. One bad file never fails the batch; only
    an error of the model itself propagates (Spark then retries the task).
    Plain lists, no pandas: at 8 images per CNN call, building DataFrames per
    call cost more than decoding.
    """
    timings = timings or BatchTimings()
    started = time.perf_counter()
    decoded: list[np.ndarray] = []
    decoded_rows: list[int] = []
    outcomes: list[Outcome | None] = [None] * len(contents)
    for row, data in enumerate(contents):
        try:
            decoded.append(
                decode_image(
                    data,
                    settings.image_size,
                    max_pixels=settings.max_pixels,
                    max_decode_bytes=settings.max_decode_bytes,
                )
            )
            decoded_rows.append(row)
        except ImageDecodeError as exc:
            outcomes[row] = Outcome(stage="decode", reason=str(exc), code="", retryable=False)
    timings.decode_seconds += time.perf_counter() - started

    started = time.perf_counter()
    for start in range(0, len(decoded), settings.batch_size):
        rows = decoded_rows[start : start + settings.batch_size]
        vectors = extract(np.stack(decoded[start : start + settings.batch_size]))
        for row, vector in zip(rows, vectors, strict=True):
            outcomes[row] = Outcome(features=vector)
    timings.cnn_seconds += time.perf_counter() - started
    return outcomes


def featurize_fetched(
    fetched: list, extract: Extractor, settings: FeaturizeSettings, *, timings: BatchTimings | None = None
) -> list[Outcome]:
    """Like featurize_contents for fetch.Fetched items: a read error is an Outcome of stage "read"."""
    readable = iter(
        featurize_contents([item.data for item in fetched if item.error is None], extract, settings, timings=timings)
    )
    return [
        next(readable)
        if item.error is None
        else Outcome(stage="read", reason=str(item.error), code=item.error.code, retryable=item.error.retryable)
        for item in fetched
    ]
