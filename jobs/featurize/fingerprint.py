"""The settings fingerprint: what makes two feature vectors comparable, so which committed chunks a run reuses."""

from __future__ import annotations

import hashlib
import json

from featurize import __version__
from featurize.batch import FeaturizeSettings
from featurize.model import weights_identity

# The modules whose code decides what a feature vector is.
FEATURIZING_MODULES = ("images.py", "batch.py", "model.py")


def featurizing_code() -> dict[str, str]:
    """sha256 of the decoding and CNN code (read through the import system: the job may run from a zip), and the
    versions of the libraries that compute the features."""
    from importlib import metadata, resources

    package = resources.files("featurize")
    code = hashlib.sha256(b"".join((package / name).read_bytes() for name in FEATURIZING_MODULES)).hexdigest()
    versions = {}
    for distribution in ("pillow", "keras", "tensorflow-cpu", "tensorflow", "ai-edge-litert"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    return {"code": code[:16], **versions}


def settings_fingerprint(settings: FeaturizeSettings) -> str:
    """What makes two feature vectors comparable: weights content, input size, decode limits, the featurizing
    code and its libraries."""
    identity = {
        "model": "MobileNetV2(include_top=False, pooling=avg)",
        "runtime": settings.runtime,
        "weights": weights_identity(settings.weights, settings.image_size),
        "image_size": settings.image_size,
        "max_pixels": settings.max_pixels,
        "max_decode_bytes": settings.max_decode_bytes,
        "job": __version__,
        "featurizing_code": featurizing_code(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
