"""The CNN runtimes agree, and the test weights give features that vary between images."""

from __future__ import annotations

import numpy as np
import pytest
from featurize.images import decode_image
from featurize.model import build_extractor, converted_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fruit_batch(sample_dir):
    files = [sorted(folder.glob("*.jpg"))[5] for folder in sorted(p for p in sample_dir.iterdir() if p.is_dir())]
    return np.stack([decode_image(path.read_bytes(), 224) for path in files])


def test_tflite_features_equal_keras_features(test_weights, fruit_batch, tmp_path, monkeypatch):
    monkeypatch.setenv("FRUITCLOUD_MODEL_CACHE", str(tmp_path))
    weights, _ = test_weights
    keras = build_extractor(str(weights), 224, threads=1, runtime="keras")(fruit_batch)
    tflite = build_extractor(str(weights), 224, threads=1, runtime="tflite")(fruit_batch)

    assert tflite.shape == keras.shape == (len(fruit_batch), 1280)
    assert np.abs(tflite - keras).max() <= 1e-4 * np.abs(keras).max()
    [converted] = tmp_path.glob("mobilenet_v2-224-*.tflite")
    assert converted_model(str(weights), 224) == converted, "converted once, then read from the cache"


def test_calibrated_test_weights_give_features_that_vary_at_a_normal_scale(test_weights, fruit_batch):
    weights, _ = test_weights
    features = build_extractor(str(weights), 224, threads=1, runtime="tflite")(fruit_batch)

    assert 0.05 < features.mean() < 10, "activations at a trained network's scale, not 1e-11"
    centred = features - features.mean(axis=0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    explained = np.cumsum(spectrum) / spectrum.sum()
    assert int(np.searchsorted(explained, 0.95)) + 1 > 3, "PCA at 95 % keeps more than a few components"
