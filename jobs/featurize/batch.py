"""Per-batch featurization, the body of the pandas UDF, runnable on plain pandas data."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featurize.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from featurize.model import Extractor

RESULT_COLUMNS = ["features", "error_stage", "error"]


@dataclass(frozen=True)
class FeaturizeSettings:
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 8
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_bytes: int = DEFAULT_MAX_DECODE_BYTES
    tf_threads: int = 1


@dataclass
class BatchTimings:
    decode_seconds: float = 0.0
    cnn_seconds: float = 0.0


def featurize_batch(
    contents: pd.Series,
    extract: Extractor,
    settings: FeaturizeSettings,
    *,
    timings: BatchTimings | None = None,
) -> pd.DataFrame:
    """Decode a Series of image bytes and run the CNN on those that decode.

    Returns one row per input, in order: ``features`` (list of float32) for a
    decoded image, else ``error_stage``/``error`` saying why. One bad file never
    fails the batch; only an error of the model itself propagates (Spark then
    retries the task).
    """
    timings = timings or BatchTimings()
    started = time.perf_counter()
    decoded: list[np.ndarray] = []
    decoded_rows: list[int] = []
    errors: list[str | None] = [None] * len(contents)
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
            errors[row] = str(exc)
    timings.decode_seconds += time.perf_counter() - started

    features: list[list[float] | None] = [None] * len(contents)
    started = time.perf_counter()
    for start in range(0, len(decoded), settings.batch_size):
        chunk = np.stack(decoded[start : start + settings.batch_size])
        for row, vector in zip(decoded_rows[start : start + settings.batch_size], extract(chunk), strict=False):
            features[row] = vector
    timings.cnn_seconds += time.perf_counter() - started

    return pd.DataFrame(
        {
            "features": features,
            "error_stage": ["decode" if error else None for error in errors],
            "error": errors,
        },
        columns=RESULT_COLUMNS,
    )


def featurize_fetched(
    fetched: list, extract: Extractor, settings: FeaturizeSettings, *, timings: BatchTimings | None = None
) -> pd.DataFrame:
    """Like featurize_batch for fetch.Fetched items: a read error is an error row of stage "read"."""
    readable = [index for index, item in enumerate(fetched) if item.error is None]
    contents = pd.Series([fetched[i].data for i in readable], dtype=object)
    results = featurize_batch(contents, extract, settings, timings=timings)
    frame = pd.DataFrame({"features": [None] * len(fetched), "stage": None, "reason": None}, dtype=object)
    for column, source in (("features", "features"), ("stage", "error_stage"), ("reason", "error")):
        frame.loc[readable, column] = pd.Series(results[source].tolist(), index=readable, dtype=object)
    unreadable = [index for index, item in enumerate(fetched) if item.error is not None]
    frame.loc[unreadable, "stage"] = "read"
    frame.loc[unreadable, "reason"] = [fetched[i].error for i in unreadable]
    return frame
