"""The run's manifest: what ran, on what, with which settings, what came out, and how long it took.

Written last: a run folder without manifest.json is not complete, whatever else is in it.
"""

from __future__ import annotations

import os
import platform
import pwd
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata

from featurize import __version__
from featurize.storage import join

OUTPUTS = ("features", "errors", "pca", "pca_model")


@dataclass(frozen=True)
class Counts:
    files: int
    inputs: int
    featurized: int
    errors: int
    per_class: dict[str, int]
    # Of the errors, those a rerun retries (errors.RetryableReadError).
    retryable_errors: int = 0

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "ignored_non_images": self.files - self.inputs,
            "inputs": self.inputs,
            "featurized": self.featurized,
            "errors": self.errors,
            "errors_permanent": self.errors - self.retryable_errors,
            "errors_retryable": self.retryable_errors,
            "classes": len(self.per_class),
            "per_class": dict(sorted(self.per_class.items(), key=lambda item: str(item[0]))),
        }


def per_class(labels) -> dict[str, int]:
    return dict(Counter(label for label in labels))


def library_versions() -> dict[str, str]:
    import numpy
    import pandas
    import PIL
    import pyarrow
    import pyspark

    versions = {
        "featurize": __version__,
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "pyarrow": pyarrow.__version__,
        "pillow": PIL.__version__,
    }
    # Read from the package metadata: importing TensorFlow would cost the driver ~0.5 GB.
    for distribution in ("tensorflow-cpu", "tensorflow"):
        try:
            versions["tensorflow"] = metadata.version(distribution)
            break
        except metadata.PackageNotFoundError:
            versions["tensorflow"] = "not installed on the driver"
    return versions


def build_manifest(
    *,
    run_id: str,
    input_uri: str,
    run_uri: str,
    started_at: datetime,
    parameters: dict,
    incremental: dict,
    counts: Counts,
    pca: dict,
    timing: dict,
    outputs: dict[str, object],
) -> dict:
    """The manifest as a dict; every argument is what the run measured or chose, nothing is read here but the host."""
    wall = sum(timing["stages_seconds"].values())
    return {
        "run_id": run_id,
        "status": "complete",
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": input_uri,
        "output": run_uri,
        "host": {"name": platform.node(), "user": pwd.getpwuid(os.geteuid()).pw_name},
        "parameters": parameters,
        "versions": library_versions(),
        "incremental": incremental,
        "counts": counts.as_dict(),
        "pca": pca,
        "timing": {
            **timing,
            "wall_seconds": round(wall, 3),
            "images_per_second": round(counts.inputs / wall, 2) if wall else None,
        },
        "outputs": {**{name: join(run_uri, name) for name in OUTPUTS}, **outputs},
    }
