"""The run's published outputs after the features: PCA fit, projection and model, and the report."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

from featurize.context import RunContext
from featurize.storage import join

log = logging.getLogger("featurize")


def fit_pca(run: RunContext, features):
    from featurize import pipeline

    with run.clock.stage("pca_fit") as details:
        pca = pipeline.fit_pca(features, k=run.config.pca_k, target_variance=run.config.pca_variance)
        details.update(k=pca.k, explained=round(pca.cumulative_at_k, 4))
    return pca


def write_pca(run: RunContext, features, pca) -> list[str]:
    from featurize import pipeline

    with run.clock.stage("pca_write") as details:
        output = join(run.run_uri, "pca")
        previous = [f.path for f in run.storage.list_files(output)]
        name = f"{run.fingerprint}-k{pca.k}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
        parts = pipeline.write_projection(
            run.spark, features, pca, uri=output, name=name, endpoint_url=run.fetch.endpoint_url, requests=run.requests
        )
        run.storage.delete_many([path for path in previous if path not in parts])
        details.update(parts=len(parts))
    return parts


class ModelSave:
    """Saves pca_model in a thread: a few small s3a writes (seconds over S3), overlapping the projection and report."""

    def __init__(self, run: RunContext, pca):
        from pyspark import InheritableThread

        self.seconds = 0.0
        self._error: Exception | None = None
        self._thread = InheritableThread(target=self._save, args=(join(run.run_uri, "pca_model"), pca), daemon=True)
        self._thread.start()

    def _save(self, uri: str, pca) -> None:
        started = time.perf_counter()
        try:
            pca.model.write().overwrite().save(uri)
        except Exception as exc:  # raised by wait(), in the main thread
            self._error = exc
        self.seconds = time.perf_counter() - started

    def wait(self) -> float:
        """The save's seconds, once it is done; its error, if it failed."""
        self._thread.join()
        if self._error:
            raise self._error
        return self.seconds

    def join(self) -> None:
        self._thread.join()


def write_report(run: RunContext, manifest: dict, *, features, reasons: dict[str, int], pca) -> str | None:
    """Plots and HTML from aggregates and a bounded uniform sample; a failure never fails the run.

    The scatter projects the collected sample on the driver with the first
    two components (as the projection does: no centring), instead of
    shipping the PCA model (1280 x k doubles) inside Spark tasks.
    """
    from pyspark.ml.functions import vector_to_array

    from featurize.probe import class_separation
    from featurize.report import SCATTER_SAMPLE, build_report

    try:
        featurized = manifest["counts"]["featurized"]
        fraction = min(1.0, 1.2 * SCATTER_SAMPLE / max(featurized, 1))
        # As Arrow, not Rows: 5,000 rows of 1280 Python floats held about 200 MB of the driver's memory.
        # float32 loses nothing: the features were computed and stored as float32.
        sample = (
            features.sample(fraction=fraction, seed=0)
            .limit(SCATTER_SAMPLE)
            .select(vector_to_array("features", "float32").alias("features"), "label")
            .toArrow()
        )
        labels = sample.column("label").to_pylist()
        # Kept float32, a view of the Arrow buffer: a float64 copy would add 50 MB to the driver's peak.
        matrix = sample.column("features").combine_chunks().flatten().to_numpy().reshape(len(labels), -1)
        manifest["pca"]["class_separation"] = class_separation(matrix, labels, pca.components)
        projected = matrix @ pca.components[:, :2]
        points = [
            (float(pc[0]), float(pc[1]) if len(pc) > 1 else 0.0, label)
            for pc, label in zip(projected, labels, strict=True)
        ]
        report_uri = join(run.run_uri, "report")
        for name, data in build_report(manifest, points, reasons).items():
            content_type = "text/html" if name.endswith(".html") else "image/png"
            run.storage.write_bytes(join(report_uri, name), data, content_type)
        return join(report_uri, "report.html")
    except Exception:  # the data outputs are complete; a plotting problem must not discard them
        log.exception("report could not be written; the run's data outputs are complete")
        return None
