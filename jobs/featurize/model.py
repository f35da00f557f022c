"""The CNN feature extractor: MobileNetV2 without its top, pooled, on one of two runtimes.

- ``tflite`` (the default): the Keras model converted once per host and
  weights to a TFLite flatbuffer (cached on disk), run by LiteRT's
  interpreter with XNNPACK. About 1.8x faster per core than Keras's compiled
  call and a Python worker of about 130 MB instead of 600 (no TensorFlow
  imported once the conversion is cached); features equal to about 1e-6
  relative (tests/jobs/test_model.py).
- ``keras``: the Keras model's compiled call in TensorFlow.

TensorFlow and LiteRT are imported inside the functions so that the package,
its CLI and its tests import without them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from featurize.errors import WeightsNotFoundError

FEATURE_DIM = 1280
KERAS_WEIGHT_SIZES = (96, 128, 160, 192, 224)
RUNTIMES = ("tflite", "keras")
# Images per CNN call, the fastest in the job's layout (a process per core, one thread each) at 224 px
# in this project's benchmark (bench/results/bench.json, "limit"): small batches keep their activations
# in the CPU's cache. LiteRT at 2 ran 1.16x its rate at 8, Keras at 4 ran 1.10x its rate at 8.
BATCH_SIZES = {"tflite": 2, "keras": 4}

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


def weights_identity(weights: str, image_size: int) -> str:
    """What the weights are, by content: ``none`` (seeded random init) or the sha256 of the file used."""
    if weights == "none":
        return "none"
    path = imagenet_weights_path(image_size) if weights == "imagenet" else Path(weights)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _limit_tensorflow_threads(tf, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # TF was already initialised in this worker; its pools stay as they are.


def keras_model(weights: str, image_size: int):
    """MobileNetV2 without its top, global average pooling, with the given weights."""
    import tensorflow as tf

    check_weights(weights, image_size)
    if weights == "none":
        # Same seed on every worker: random-init features stay comparable
        # across workers, runs and cluster layouts.
        tf.keras.utils.set_random_seed(0)
    return tf.keras.applications.MobileNetV2(
        input_shape=(image_size, image_size, 3),
        include_top=False,
        pooling="avg",
        weights=None if weights == "none" else weights,
    )


def keras_extractor(weights: str, image_size: int, threads: int) -> Extractor:
    """The Keras model's forward pass, preprocessing included, compiled as a tf.function.

    ``threads`` caps TensorFlow's thread pools so that Spark task slots times
    TF threads never exceeds the cores: oversubscription costs more than it gains.
    """
    import tensorflow as tf

    _limit_tensorflow_threads(tf, threads)
    model = keras_model(weights, image_size)
    preprocess = tf.keras.applications.mobilenet_v2.preprocess_input

    @tf.function(
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.uint8)],
        reduce_retracing=True,
    )
    def extract(batch):
        return model(preprocess(tf.cast(batch, tf.float32)), training=False)

    def extract_batch(batch: np.ndarray) -> np.ndarray:
        return extract(tf.constant(batch)).numpy()

    return extract_batch


def model_cache() -> Path:
    """Where converted models are kept: FRUITCLOUD_MODEL_CACHE, else the user's cache, else a private temp dir."""
    configured = os.environ.get("FRUITCLOUD_MODEL_CACHE")
    preferred = (
        Path(configured)
        if configured
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fruitcloud" / "models"
    )
    try:
        preferred.mkdir(parents=True, exist_ok=True)
        if os.access(preferred, os.W_OK):
            return preferred
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"fruitcloud-models-{os.getuid()}"
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def installed_version(*distributions: str) -> str | None:
    """The version of the first of ``distributions`` installed, from package metadata (nothing imported)."""
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None


def _tensorflow_version() -> str:
    return installed_version("tensorflow-cpu", "tensorflow") or "absent"


@contextlib.contextmanager
def _converter_output_kept_aside():
    """Keep the converter's few hundred lines (Keras's export summary, MLIR's notes) off the console.

    They are printed by C++ and Python alike, so the process's stdout and
    stderr file descriptors are pointed at a temporary file meanwhile; should
    the conversion fail, its output is in the error.
    """
    import sys

    with tempfile.TemporaryFile() as aside:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(aside.fileno(), 1)
        os.dup2(aside.fileno(), 2)
        try:
            yield
        except Exception as exc:
            sys.stdout.flush()
            sys.stderr.flush()
            aside.seek(0)
            exc.add_note("converter output:\n" + aside.read()[-20000:].decode(errors="replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)


def converted_model(weights: str, image_size: int) -> Path:
    """The TFLite flatbuffer of keras_model(weights, image_size): converted once per host, then read from disk.

    Named by the weights' content, the size, TensorFlow's version and this
    module's code, so no stale conversion is ever used; the first Python
    worker converts (under a file lock, about 10 s, during the warm-up) and
    the others wait for it and load the file.
    """
    check_weights(weights, image_size)
    key = "|".join([weights_identity(weights, image_size), str(image_size), _tensorflow_version(), _module_code_hash()])
    path = model_cache() / f"mobilenet_v2-{image_size}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.tflite"
    if path.is_file():
        return path
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            import tensorflow as tf

            _limit_tensorflow_threads(tf, 1)
            with _converter_output_kept_aside():
                flatbuffer = tf.lite.TFLiteConverter.from_keras_model(keras_model(weights, image_size)).convert()
            partial = path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(flatbuffer)
            os.replace(partial, path)
    return path


def _module_code_hash() -> str:
    from importlib import resources

    # Through the import system: the job runs from a zip (--py-files).
    return hashlib.sha256((resources.files("featurize") / "model.py").read_bytes()).hexdigest()[:16]


def tflite_extractor(weights: str, image_size: int, threads: int) -> Extractor:
    """The converted model in LiteRT's interpreter (XNNPACK), preprocessing as Keras's MobileNetV2 does."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(converted_model(weights, image_size)), num_threads=threads)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    allocated: list[tuple[int, ...]] = [()]

    def extract_batch(batch: np.ndarray) -> np.ndarray:
        if batch.shape != allocated[0]:
            interpreter.resize_tensor_input(input_index, list(batch.shape))
            interpreter.allocate_tensors()
            allocated[0] = batch.shape
        # preprocess_input of mobilenet_v2 ("tf" mode): pixels to [-1, 1].
        interpreter.set_tensor(input_index, batch.astype(np.float32) / 127.5 - 1.0)
        interpreter.invoke()
        return interpreter.get_tensor(output_index).copy()

    return extract_batch


def build_extractor(weights: str, image_size: int, threads: int, runtime: str = "tflite") -> Extractor:
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
    return (tflite_extractor if runtime == "tflite" else keras_extractor)(weights, image_size, threads)


_WORKER_EXTRACTORS: dict[tuple[str, int, int, str], Extractor] = {}


def built_in_this_worker(weights: str, image_size: int, threads: int, runtime: str = "tflite") -> bool:
    return (weights, image_size, threads, runtime) in _WORKER_EXTRACTORS


def worker_extractor(weights: str, image_size: int, threads: int, runtime: str = "tflite") -> Extractor:
    """The extractor of this Python worker, built on first use and then reused.

    Spark reuses Python workers across tasks (spark.python.worker.reuse), so
    the model is built once per worker, not once per partition or batch.
    """
    key = (weights, image_size, threads, runtime)
    if key not in _WORKER_EXTRACTORS:
        _WORKER_EXTRACTORS[key] = build_extractor(weights, image_size, threads, runtime)
    return _WORKER_EXTRACTORS[key]
