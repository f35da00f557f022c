"""The class-separation probe: held-out nearest-centroid accuracy before and after PCA, or why it was skipped."""

from __future__ import annotations

import numpy as np
import pytest
from featurize.probe import class_separation


def clusters(separating_scale: float, noise_scale: float, per_class: int = 40, seed: int = 1):
    """Three classes apart along axis 0 only; axes 1 and 2 carry large noise that says nothing of the class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(["Apple", "Banana", "Kiwi"], per_class)
    centres = {"Apple": -1.0, "Banana": 0.0, "Kiwi": 1.0}
    features = rng.normal(size=(len(labels), 3)) * [0.05 * separating_scale, noise_scale, noise_scale]
    features[:, 0] += [centres[label] * separating_scale for label in labels]
    return features, list(labels)


def test_well_separated_classes_are_found_on_both_the_full_and_the_kept_components():
    features, labels = clusters(separating_scale=10.0, noise_scale=1.0)
    keep_the_separating_axis = np.eye(3)[:, :1]
    probe = class_separation(features, labels, keep_the_separating_axis)
    assert (probe["accuracy_full"], probe["accuracy_pca"]) == (1.0, 1.0)
    assert (probe["held_out_images"], probe["sample_images"], probe["classes"]) == (24, 120, 3)
    assert probe["chance"] == pytest.approx(1 / 3, abs=1e-4)
    assert (probe["dimensions_full"], probe["dimensions_pca"]) == (3, 1)


def test_components_that_drop_the_separating_direction_lose_the_classes():
    """What k costs: PCA keeps the high-variance noise axes and drops the low-variance axis the classes differ on."""
    features, labels = clusters(separating_scale=0.5, noise_scale=0.01)
    noise_axes_only = np.eye(3)[:, 1:]
    probe = class_separation(features, labels, noise_axes_only)
    assert probe["accuracy_full"] == 1.0
    assert probe["accuracy_pca"] < 0.7


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (["Apple"] * 20, "needs at least 2 classes, the sample has 1"),
        (["Apple"] * 20 + ["Kiwi"] * 3, "class Kiwi has 3 images in the sample; at least 5 per class are needed"),
    ],
)
def test_too_few_classes_or_images_is_skipped_with_the_reason(labels, reason):
    probe = class_separation(np.ones((len(labels), 4)), labels, np.eye(4)[:, :2])
    assert probe["skipped"].startswith(reason)
