"""The job's Spark stages: featurize committed chunks in a pandas UDF, read them back, fit and apply PCA.

Data moves between S3 and the Python workers directly (featurize.fetch reads
images, featurize.commits writes chunks); Spark schedules the tasks and runs
pyspark.ml's PCA. No URI is baked in: the job passes them in.
"""

from __future__ import annotations

import io
import json
import math
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.accumulators import AccumulatorParam
from pyspark.ml.feature import PCA, PCAModel
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import types as T

from featurize.batch import BatchTimings, FeaturizeSettings, Outcome, featurize_fetched
from featurize.commits import ATTEMPTS_DIR, RETRY, Commit, rows_hash, write_chunk
from featurize.fetch import FetchSettings, fetch_batches
from featurize.model import built_in_this_worker, worker_extractor
from featurize.progress import TaskReporter, task_report_uri
from featurize.storage import ListedFile, Storage, is_s3, join, request_counts, requests_since


class Todo(NamedTuple):
    """An image for the featurize stage, as the listing saw it."""

    path: str
    label: str | None
    size_bytes: int
    etag: str
    modified: datetime


COMMITTED_SCHEMA = T.StructType(
    [
        T.StructField("commit", T.StringType()),
        T.StructField("featurized", T.LongType()),
        T.StructField("errors", T.LongType()),
        T.StructField("retryable", T.LongType()),
        # Where the images were featurized: the executor host.
        T.StructField("host", T.StringType()),
    ]
)
FEATURES_SCHEMA = T.StructType(
    [
        T.StructField("path", T.StringType()),
        T.StructField("label", T.StringType()),
        T.StructField("features", T.ArrayType(T.FloatType())),
    ]
)


@dataclass(frozen=True)
class ChunkSettings:
    """Where and how often a featurize task commits (the run's --commit-every).

    ``attempt_records`` is this run's own folder of retried tasks' records, so
    that a record left by a run killed mid-retry never marks images of another.
    """

    run_uri: str
    fingerprint: str
    commit_every: int
    attempt_records: str = ""
    # This run's folder of the tasks' progress counts (featurize.progress); empty: no counts written.
    progress_records: str = ""


class RequestCountsParam(AccumulatorParam):
    """Sums the tasks' S3 request counts by operation, for the run's cost (featurize.cost)."""

    def zero(self, value: dict[str, int]) -> dict[str, int]:
        return {}

    def addInPlace(self, first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
        for operation, count in second.items():
            first[operation] = first.get(operation, 0) + count
        return first


@contextmanager
def counting_requests(requests):
    """Add the S3 requests this task's process sends meanwhile to the ``requests`` accumulator (if any)."""
    before = request_counts()
    try:
        yield
    finally:
        if requests is not None:
            requests.add(requests_since(before))


def model_key(settings: FeaturizeSettings) -> tuple[str, int, int, str]:
    """What a Python worker's model is built from (featurize.model.worker_extractor)."""
    return settings.weights, settings.image_size, settings.tf_threads, settings.runtime


def task_attempt() -> int:
    """0 for a task's first attempt (and outside Spark), then 1, 2, ... for Spark's retries of it."""
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.attemptNumber() if context else 0


def task_partition() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return context.partitionId() if context else 0


def crash_record_uri(chunks: ChunkSettings, rows: list[Todo]) -> str:
    """The record of a retried task: named by the task's rows, under this run's folder of them."""
    folder = chunks.attempt_records or join(chunks.run_uri, ATTEMPTS_DIR)
    return join(folder, rows_hash([(row.path, row.etag) for row in rows]) + ".json")


def label_of(path: str, root: str) -> str | None:
    """The name of the image's parent folder; None for an image directly under the input root."""
    parent = path.rsplit("/", 1)[0]
    return None if parent.rstrip("/") == root.rstrip("/") else parent.rsplit("/", 1)[-1]


def task_count(spark: SparkSession, images: int, files_per_partition: int) -> int:
    """Tasks of about ``files_per_partition`` images, rounded up to whole waves of task slots.

    Fewer, larger tasks keep CNN batches full and pay the per-task start cost
    less often; whole waves keep every core busy to the end.
    """
    slots = max(spark.sparkContext.defaultParallelism, 1)
    return min(images, math.ceil(math.ceil(images / files_per_partition) / slots) * slots) if images else 0


def make_featurize_task(
    settings: FeaturizeSettings,
    fetch: FetchSettings,
    chunks: ChunkSettings,
    *,
    decode_seconds=None,
    cnn_seconds=None,
    models_built=None,
    requests=None,
):
    """The pandas function of the featurize stage: images to fetch in, one row per committed chunk out.

    Reads run ahead of the CNN (fetch_batches); every ``commit_every`` images the
    task commits a chunk, so a crash loses at most that much work per task.
    The model is built once per Python worker (by warm_up_frame, or else by
    the worker's first task, counted in ``models_built``) and reused.
    """

    def featurize_task(rows: list[Todo]) -> Iterator[pd.DataFrame]:
        with counting_requests(requests):
            if models_built is not None and not built_in_this_worker(*model_key(settings)):
                models_built.add(1)
            extract = worker_extractor(*model_key(settings))
            storage = Storage(fetch.endpoint_url)
            attempt = task_attempt()
            if attempt == 0:
                outcomes = featurize_rows(rows, extract, settings, fetch, timers=(decode_seconds, cnn_seconds))
            else:
                record = crash_record_uri(chunks, rows)
                outcomes = featurize_isolating(
                    rows, extract, settings, fetch, storage, record_uri=record, attempt=attempt
                )
            reporter = TaskReporter(storage, task_report_uri(chunks.progress_records, task_partition()))
            pending: list[tuple] = []
            for row, outcome in outcomes:
                pending.append((*row, outcome.features, outcome.stage, outcome.reason, outcome.code, outcome.retryable))
                if chunks.progress_records:
                    reporter.add(1)
                if len(pending) >= chunks.commit_every:
                    yield _commit(storage, chunks, pending)
                    pending = []
            if pending:
                yield _commit(storage, chunks, pending)
            if chunks.progress_records:
                reporter.write()

    return featurize_task


def featurize_rows(
    rows: list[Todo], extract, settings: FeaturizeSettings, fetch: FetchSettings, *, timers=(None, None)
) -> Iterator[tuple[Todo, Outcome]]:
    """Each row with its outcome, reads running ahead of the CNN; ``timers`` (decode, CNN) accumulate seconds."""
    decode_seconds, cnn_seconds = timers
    by_path = {row.path: row for row in rows}
    for group in fetch_batches(((row.path, row.size_bytes, row.etag) for row in rows), fetch, settings.batch_size):
        timings = BatchTimings()
        outcomes = featurize_fetched(group, extract, settings, timings=timings)
        paths = [item.path for item in group]
        # The batch's bytes are counted until the next batch is asked for: let them go now.
        del group
        if decode_seconds is not None:
            decode_seconds.add(timings.decode_seconds)
            cnn_seconds.add(timings.cnn_seconds)
        for path, outcome in zip(paths, outcomes, strict=True):
            yield by_path[path], outcome


def featurize_isolating(
    rows: list[Todo],
    extract,
    settings: FeaturizeSettings,
    fetch: FetchSettings,
    storage: Storage,
    *,
    record_uri: str,
    attempt: int,
) -> Iterator[tuple[Todo, Outcome]]:
    """A retried task: one image at a time, each named in a record first, so the next attempt knows
    which image its worker died on and records it as an error instead of dying again."""
    record = json.loads(storage.read_if_exists(record_uri) or b"{}")
    died_on = set(record.get("died_on", [])) | ({record["current"]} if record.get("current") else set())
    for row in rows:
        if row.path in died_on:
            reason = f"its Python worker died on it (a decoder crash or the out-of-memory killer; attempt {attempt})"
            yield row, Outcome(stage="worker", reason=reason, code="WorkerDied", retryable=True)
            continue
        current = {"died_on": sorted(died_on), "current": row.path}
        storage.write_bytes(record_uri, json.dumps(current).encode(), "application/json")
        [group] = fetch_batches([(row.path, row.size_bytes, row.etag)], fetch, batch_size=1)
        [outcome] = featurize_fetched(group, extract, settings)
        yield row, outcome


def _commit(storage: Storage, chunks: ChunkSettings, pending: list[tuple]) -> pd.DataFrame:
    rows = pd.DataFrame(pending, columns=[*Todo._fields, "features", "stage", "reason", "code", "retryable"])
    commit = write_chunk(storage, chunks.run_uri, fingerprint=chunks.fingerprint, rows=rows)
    failed = int(rows["reason"].notna().sum())
    retryable = sum(1 for *_, kind in commit.rows if kind == RETRY)
    return pd.DataFrame(
        {
            "commit": [commit.uri],
            "featurized": [len(rows) - failed],
            "errors": [failed],
            "retryable": [retryable],
            "host": [socket.gethostname()],
        }
    )


def warm_up_frame(spark: SparkSession, settings: FeaturizeSettings) -> DataFrame:
    """One row per task slot, each from a task that builds the model and compiles its call in its Python worker.

    Spark keeps idle Python workers and hands them the next tasks
    (spark.python.worker.reuse), so the featurize tasks that follow find the
    model built (worker_extractor) instead of each paying the TensorFlow import,
    the model build and the first traced call at their start.
    """
    slots = max(spark.sparkContext.defaultParallelism, 1)

    def warm(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        extract = worker_extractor(*model_key(settings))
        extract(np.zeros((settings.batch_size, settings.image_size, settings.image_size, 3), np.uint8))
        for _ in batches:
            pass
        yield pd.DataFrame({"warmed": [1]})

    return spark.range(slots, numPartitions=slots).mapInPandas(warm, "warmed long")


def share_bounds(count: int, shares: int) -> list[tuple[int, int]]:
    """``shares`` contiguous [start, end) ranges of ``count`` items, their sizes within one of each other."""
    return [(index * count // shares, (index + 1) * count // shares) for index in range(shares)]


def featurize(spark: SparkSession, todo: Sequence[ListedFile], *, root: str, tasks: int, featurize_task) -> list[Row]:
    """Run the featurize stage over ``todo`` in ``tasks`` contiguous slices of the sorted listing: a row per commit.

    Task i reads slice i from a broadcast of its own and starts from spark.range,
    which the JVM makes: a DataFrame made from a Python RDD of the rows would run a
    second Python daemon and, beside each CNN worker, a worker that only turns the
    list into rows. One broadcast per slice, not one of the whole list: a worker
    loads only its own slice (a million images' list would be 150 MB per worker).
    """
    sc = spark.sparkContext
    rows = [Todo(f.path, label_of(f.path, root), f.size, f.etag, f.modified) for f in todo]
    slices = [sc.broadcast(rows[start:end]) for start, end in share_bounds(len(rows), tasks)]

    def featurize_slices(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for index in batch["id"]:
                yield from featurize_task(slices[index].value)

    try:
        return spark.range(tasks, numPartitions=tasks).mapInPandas(featurize_slices, COMMITTED_SCHEMA).collect()
    finally:
        for broadcast in slices:
            broadcast.destroy()


def read_features(
    spark: SparkSession, commits: Sequence[Commit], endpoint_url: str | None, *, requests=None
) -> DataFrame:
    """The features of the live commits as ``path, label, features (vector)``: one GET per part, no listing."""
    parts = [commit.features for commit in commits if commit.features]
    tasks = max(1, min(len(parts), 64))
    slices = [parts[start:end] for start, end in share_bounds(len(parts), tasks)]

    def read_parts(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow.parquet as pq

        storage = Storage(endpoint_url)
        with counting_requests(requests):
            for batch in batches:
                for index in batch["id"]:
                    for uri in slices[index]:
                        data = io.BytesIO(storage.read_bytes(uri))
                        yield pq.read_table(data, columns=["path", "label", "features"]).to_pandas()

    features = spark.range(tasks, numPartitions=tasks).mapInPandas(read_parts, FEATURES_SCHEMA)
    return features.select("path", "label", array_to_vector("features").alias("features"))


def choose_k(explained_variance: Sequence[float], target: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``target``."""
    total = 0.0
    for k, ratio in enumerate(explained_variance, start=1):
        total += ratio
        if total >= target - 1e-12:
            return k
    return len(explained_variance)


@dataclass(frozen=True)
class PcaResult:
    model: PCAModel
    k: int
    explained_variance: list[float]

    @property
    def cumulative_at_k(self) -> float:
        return float(sum(self.explained_variance[: self.k]))

    @property
    def components(self) -> np.ndarray:
        """The first k principal components as a (dimension, k) matrix."""
        return self.model.pc.toArray()[:, : self.k]


def fit_pca(features: DataFrame, *, k: int | None = None, target_variance: float | None = None) -> PcaResult:
    """Fit PCA once and return a model that outputs ``pca`` with ``k`` components, or the fewest reaching the target.

    Spark's PCA cost is one pass to build the covariance plus a local
    eigendecomposition; k only slices the result. So with a variance target it
    fits all components once, picks k from the spectrum, and keeps a model of
    the first k: one pass over the data, not two fits, and a model of
    dimension x k (not the 13 MB of all 1280 components, which Spark would
    ship inside every task that transforms with it).
    """
    if (k is None) == (target_variance is None):
        raise ValueError("fit_pca takes either k or target_variance")
    dimension = len(features.select("features").first()["features"])
    if k is not None:
        pca = PCA(k=min(k, dimension), inputCol="features", outputCol="pca").fit(features)
        return PcaResult(pca, pca.getK(), [float(v) for v in pca.explainedVariance])
    pca = PCA(k=dimension, inputCol="features", outputCol="pca").fit(features)
    spectrum = [float(v) for v in pca.explainedVariance]
    chosen = choose_k(spectrum, target_variance)
    return PcaResult(first_components(pca, chosen), chosen, spectrum)


def first_components(model: PCAModel, k: int) -> PCAModel:
    """The PCAModel of the first ``k`` components of ``model``, built in the JVM without a second fit.

    pyspark.ml has no public way to make a PCAModel from a matrix; the Scala
    constructor (package-private in Scala, public to the JVM) is the one
    Spark's own fit calls. The columns are the first k of the column-major
    component matrix, so the projection equals the first k of the full one.
    """
    from pyspark import SparkContext

    java, jvm = model._java_obj, SparkContext._active_spark_context._jvm
    rows = java.pc().numRows()
    arrays, linalg = jvm.java.util.Arrays, jvm.org.apache.spark.ml.linalg
    components = linalg.DenseMatrix(rows, k, arrays.copyOfRange(java.pc().values(), 0, rows * k))
    variance = linalg.DenseVector(arrays.copyOfRange(java.explainedVariance().values(), 0, k))
    truncated = jvm.org.apache.spark.ml.feature.PCAModel(java.uid(), components, variance)
    truncated.setInputCol(model.getInputCol()).setOutputCol(model.getOutputCol())
    truncated.set(truncated.k(), k)
    result = PCAModel(truncated)
    result._transfer_params_from_java()
    return result


def write_projection(
    spark: SparkSession,
    features: DataFrame,
    pca: PcaResult,
    *,
    uri: str,
    name: str,
    endpoint_url: str | None,
    requests=None,
) -> list[str]:
    """Project every image on the first k components and write ``uri/part-NAME-N.parquet``, one PUT per part.

    Spark's PCAModel projects without centring (x times the components), and
    so does this, on k columns only rather than all of them then slicing.
    """
    components = spark.sparkContext.broadcast(pca.components.astype(np.float32))

    def project(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        frames = list(batches)
        if not frames:
            return
        rows = pd.concat(frames, ignore_index=True)
        vectors = np.stack(rows["features"].to_numpy()).astype(np.float32) @ components.value
        table = pa.table(
            {"path": rows["path"], "label": rows["label"], "pca": list(vectors)},
            schema=pa.schema([("path", pa.string()), ("label", pa.string()), ("pca", pa.list_(pa.float32()))]),
        )
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        part = join(uri, f"part-{name}-{TaskContext.get().partitionId():05d}.parquet")
        with counting_requests(requests):
            Storage(endpoint_url).write_bytes(part, buffer.getvalue())
        yield pd.DataFrame({"part": [part]})

    arrays = features.select("path", "label", vector_to_array("features", "float32").alias("features"))
    return [row.part for row in arrays.mapInPandas(project, "part string").collect()]


def s3a_request_counts(spark: SparkSession, uri: str) -> dict[str, int]:
    """The request counters of Hadoop's S3A filesystem for ``uri``'s bucket, in the driver's JVM.

    In local mode the executors share that JVM, so this is every s3a request of
    the run; on a cluster, the executors' own (on other hosts) are not in it.
    """
    if not is_s3(uri):
        return {}
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri.replace("s3://", "s3a://", 1))
    statistics = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).getStorageStatistics()
    counts = {}
    for statistic in statistics.getLongStatistics():
        if statistic.getValue():
            counts[statistic.getName()] = statistic.getValue()
    return counts


def persist_on_disk(frame: DataFrame) -> DataFrame:
    """Keep a DataFrame read once for the PCA fit, projection and report: on disk, not in a 4 GB heap."""
    return frame.persist(StorageLevel.DISK_ONLY)
