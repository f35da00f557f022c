"""The CNN feature extractor: MobileNetV2 without its top, as a compiled function.

TensorFlow is imported inside the functions so that the package, its CLI and
its tests import without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from featurize.errors import WeightsNotFoundError

FEATURE_DIM = 1280
KERAS_WEIGHT_SIZES = (96, 128, 160, 192, 224)

Extractor = Callable[[np.ndarray], np.ndarray]


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))


def imagenet_weights_path(image_size: int) -> Path:
    """Where Keras looks for the no-top ImageNet weights for this input size.

    Keras falls back to the 224 px file for sizes it has no weights for.
    """
    rows = image_size if image_size in KERAS_WEIGHT_SIZES else 224
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return keras_home() / "models" / name


def check_weights(weights: str, image_size: int) -> None:
    """Fail early, on the driver, when the weights are not where executors expect them."""
    if weights == "none":
        return
    if weights == "imagenet":
        path = imagenet_weights_path(image_size)
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ImageNet weights not found at {path}. Executors never download them: "
                "provision the file with the model_weights role (playbooks/configure.yml), "
                "copy it there by hand, or run with --weights none|PATH."
            )
        return
    if not Path(weights).is_file():
        raise WeightsNotFoundError(f"weights file not found: {weights}")


def build_extractor(weights: str, image_size: int, threads: int) -> Extractor:
    """Build MobileNetV2 (no top, global average pooling) and compile its forward pass.

    ``threads`` caps TensorFlow's thread pools so that Spark task slots times
    TF threads never exceeds the cores: oversubscription costs more than it gains.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF was already initialised in this worker; its pools stay as they are.

    check_weights(weights, image_size)
    if weights == "none":
        # Same seed on every worker: random-init features stay comparable
        # across workers, runs and cluster layouts.
        tf.keras.utils.set_random_seed(0)
    keras_weights = None if weights == "none" else weights
    model = tf.keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        include_top=False,
        pooling="avg",
        weights=keras_weights,
    )
    preprocess = tf.keras.applications.mobilenet_v2.preprocess_input

    @tf.function(
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
        reduce_retracing=True,
    )
    def extract(batch):
        return model(preprocess(tf.cast(batch, tf.float32)), training=False)

    def run(batch: np.ndarray) -> np.ndarray:
        return extract(tf.constant(batch)).numpy()

    return run


_WORKER_EXTRACTORS: dict[tuple[str, int, int], Extractor] = {}


def built_in_this_worker(weights: str, image_size: int, threads: int) -> bool:
    return (weights, image_size, threads) in _WORKER_EXTRACTORS


def worker_extractor(weights: str, image_size: int, threads: int) -> Extractor:
    """The extractor of this Python worker, built on first use and then reused.

    Spark reuses Python workers across tasks (spark.python.worker.reuse), so
    the model is built once per worker, not once per partition or batch.
    """
    key = (weights, image_size, threads)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = build_extractor(weights, image_size, threads)
    return _WORKER_EXTRACTORS[key]
