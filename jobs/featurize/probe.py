"""Is PCA keeping the signal? How well a nearest-centroid classifier separates the classes, before and after.

Computed on the report's sample (at most report.SCATTER_SAMPLE images, on the
driver): a fifth of each class held out, class centroids from the rest, each
held-out image given the class of its nearest centroid. The accuracy on the
full features beside that on the first k components says what k costs; it is
a probe of the features, not a model to ship.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HELD_OUT = 0.2
MIN_PER_CLASS = 5


def nearest_centroid_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray):
    classes = np.unique(train_labels)
    centroids = np.stack([train[train_labels == name].mean(axis=0) for name in classes])
    # Squared distances without the n x classes x dim array: |x|^2 - 2 x.c + |c|^2.
    distances = (test**2).sum(axis=1)[:, None] - 2 * test @ centroids.T + (centroids**2).sum(axis=1)[None, :]
    return float((classes[distances.argmin(axis=1)] == test_labels).mean())


def class_separation(features: np.ndarray, labels: Sequence, components: np.ndarray, *, seed: int = 0) -> dict:
    """Held-out nearest-centroid accuracy on the features and on their projection; a reason instead when skipped."""
    names = np.array(["" if label is None else str(label) for label in labels])
    classes, counts = np.unique(names, return_counts=True)
    if len(classes) < 2:
        return {"skipped": f"needs at least 2 classes, the sample has {len(classes)}"}
    if counts.min() < MIN_PER_CLASS:
        scarce = classes[counts.argmin()] or "(no class folder)"
        return {
            "skipped": f"class {scarce} has {counts.min()} images in the sample; "
            f"at least {MIN_PER_CLASS} per class are needed to hold a fifth out"
        }
    rng = np.random.default_rng(seed)
    held = np.zeros(len(names), dtype=bool)
    for name, count in zip(classes, counts, strict=True):
        members = np.flatnonzero(names == name)
        held[rng.choice(members, size=max(1, round(HELD_OUT * count)), replace=False)] = True
    projected = features @ components
    full = nearest_centroid_accuracy(features[~held], names[~held], features[held], names[held])
    reduced = nearest_centroid_accuracy(projected[~held], names[~held], projected[held], names[held])
    return {
        "method": f"nearest centroid, {HELD_OUT:.0%} of each class held out",
        "sample_images": int(len(names)),
        "held_out_images": int(held.sum()),
        "classes": int(len(classes)),
        "chance": round(1 / len(classes), 4),
        "accuracy_full": round(full, 4),
        "accuracy_pca": round(reduced, 4),
        "dimensions_full": int(features.shape[1]),
        "dimensions_pca": int(components.shape[1]),
    }
