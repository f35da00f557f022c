"""Spark transformations of the job: DataFrames in, DataFrames out, no URIs baked in."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import unquote

import pandas as pd
from pyspark.ml import PipelineModel
from pyspark.ml.feature import PCA, VectorSlicer
from pyspark.ml.functions import array_to_vector
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from featurize.batch import BatchTimings, FeaturizeSettings, featurize_batch
from featurize.images import has_image_extension, image_path_glob
from featurize.model import worker_extractor

RESULT_TYPE = T.StructType(
    [
        T.StructField("features", T.ArrayType(T.FloatType())),
        T.StructField("error_stage", T.StringType()),
        T.StructField("error", T.StringType()),
    ]
)


@dataclass(frozen=True)
class ListingStats:
    files: int
    image_paths: tuple[str, ...]
    total_bytes: int = 0

    @property
    def average_bytes(self) -> int:
        return self.total_bytes // self.files if self.files else 0

    @property
    def images(self) -> int:
        return len(self.image_paths)

    @property
    def ignored(self) -> int:
        return self.files - self.images


def qualified_root(uri: str) -> str:
    """The input root as Spark spells file paths (``file:/x`` for ``file:///x``), no trailing slash."""
    if uri.startswith("file://"):
        uri = "file:" + uri[len("file://") :]
    elif "://" not in uri and not uri.startswith("file:"):
        import os

        uri = "file:" + os.path.abspath(uri)
    return uri.rstrip("/")


def path_as_spark_shows_it(file_uri: str) -> str:
    """``inputFiles()`` gives URIs (``file:///a%20b``); the binaryFile ``path`` column gives ``file:/a b``."""
    path = unquote(file_uri)
    return "file:" + path[len("file://") :] if path.startswith("file:///") else path


def label_column(path: Column, root: str) -> Column:
    """The name of the image's parent folder; NULL for an image directly under the root."""
    parent = F.regexp_replace(path, "/[^/]*$", "")
    folder = F.regexp_extract(parent, "([^/]+)$", 1)
    return F.when(parent == F.lit(root), F.lit(None).cast("string")).otherwise(folder)


def _binary_files(spark: SparkSession, uri: str, images_only: bool) -> DataFrame:
    reader = spark.read.format("binaryFile").option("recursiveFileLookup", "true")
    if images_only:
        reader = reader.option("pathGlobFilter", image_path_glob())
    return reader.load(uri)


def list_inputs(spark: SparkSession, uri: str) -> ListingStats:
    """Count all files and image files under ``uri`` from Spark's file index.

    The index is built by LIST calls alone; counting the DataFrame instead would
    stat every file (one HEAD request per object on S3), ten times slower.
    """
    everything = _binary_files(spark, uri, images_only=False)
    files = [path_as_spark_shows_it(p) for p in everything.inputFiles()]
    # One LIST pass; the extension rule is the same as the read's pathGlobFilter.
    images = tuple(p for p in files if has_image_extension(p.rsplit("/", 1)[-1]))
    # The file index already holds every size: its total is the plan's size estimate.
    total_bytes = int(everything._jdf.queryExecution().optimizedPlan().stats().sizeInBytes())
    return ListingStats(files=len(files), image_paths=images, total_bytes=total_bytes)


def plan_partitions(spark: SparkSession, images: int, files_per_partition: int, average_bytes: int = 0) -> int:
    """Size file splits so that each task gets about ``files_per_partition`` images.

    Spark packs files into a split while their sizes, plus a per-file open cost
    (spark.sql.files.openCostInBytes, 4 MB), fit the split size; so the split
    size is set from the number of files wanted, their average size and that
    cost, with one open cost of slack so that a split never falls one file
    short (which would add a whole wave of tiny tasks). Fewer, larger tasks keep
    CNN batches full and pay the per-task start cost less often. The task count
    is rounded up to whole waves of task slots and the images spread evenly
    over them, so no core idles through a short last wave. Returns the expected
    number of partitions.
    """
    if images == 0:
        return 0
    slots = max(spark.sparkContext.defaultParallelism, 1)
    tasks = math.ceil(math.ceil(images / files_per_partition) / slots) * slots
    per_partition = max(1, math.ceil(images / tasks))
    open_cost = int(spark.conf.get("spark.sql.files.openCostInBytes", str(4 * 1024 * 1024)))
    split_bytes = per_partition * (open_cost + average_bytes) + open_cost
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(split_bytes))
    return math.ceil(images / per_partition)


def load_images(spark: SparkSession, uri: str, only: Sequence[str] | None = None) -> DataFrame:
    """Image files under ``uri`` (recursive), or just the files ``only`` lists, with label, size, mtime and bytes."""
    root = qualified_root(uri)
    return _binary_files(spark, list(only) if only is not None else uri, images_only=True).select(
        "path",
        label_column(F.col("path"), root).alias("label"),
        F.col("length").alias("size_bytes"),
        F.col("modificationTime").alias("modified"),
        "content",
    )


def make_featurize_udf(settings: FeaturizeSettings, decode_seconds=None, cnn_seconds=None):
    """The pandas UDF ``binary -> struct<features, error_stage, error>``.

    The model is fetched once per Python worker; the optional accumulators
    sum the CPU seconds spent decoding and in the CNN across all tasks.
    """

    @F.pandas_udf(RESULT_TYPE)
    def featurize_images(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        extract = worker_extractor(settings.weights, settings.image_size, settings.tf_threads)
        for contents in batches:
            timings = BatchTimings()
            yield featurize_batch(contents, extract, settings, timings)
            if decode_seconds is not None:
                decode_seconds.add(timings.decode_seconds)
                cnn_seconds.add(timings.cnn_seconds)

    return featurize_images


def featurize(images: DataFrame, featurize_udf) -> DataFrame:
    """One row per image: identity columns plus features or the error that prevented them."""
    return images.select("path", "label", "size_bytes", "modified", featurize_udf("content").alias("result")).select(
        "path", "label", "size_bytes", "modified", "result.*"
    )


def features_of(results: DataFrame) -> DataFrame:
    return results.where(F.col("error").isNull()).select(
        "path",
        "label",
        array_to_vector("features").alias("features"),
        "size_bytes",
        "modified",
    )


def errors_of(results: DataFrame) -> DataFrame:
    return results.where(F.col("error").isNotNull()).select(
        "path",
        "label",
        F.col("error_stage").alias("stage"),
        F.col("error").alias("reason"),
        "size_bytes",
        "modified",
    )


def unread_images(spark: SparkSession, image_paths: Sequence[str], results: DataFrame, root_uri: str) -> DataFrame:
    """Listed images that the scan never returned, as error rows.

    Spark's file scan silently drops 0-byte files; without this they would
    vanish from both outputs.
    """
    listed = spark.createDataFrame([(path,) for path in image_paths], "path string")
    return listed.join(results.select("path"), "path", "left_anti").select(
        "path",
        label_column(F.col("path"), qualified_root(root_uri)).alias("label"),
        F.lit("read").alias("stage"),
        F.lit("empty file (0 bytes), skipped by Spark's file scan").alias("reason"),
        F.lit(0).cast("long").alias("size_bytes"),
        F.lit(None).cast("timestamp").alias("modified"),
    )


def read_batches(spark: SparkSession, root: str, batches: Sequence[str]) -> DataFrame:
    """The committed ``batch=ID`` folders of an output, as one DataFrame with a ``batch`` column."""
    return spark.read.option("basePath", root).parquet(*(f"{root}/batch={batch}" for batch in batches))


@dataclass(frozen=True)
class Increment:
    """What an attempt must do, given the inputs now and the rows earlier attempts committed.

    An image is done when a committed row has its path, its size and its
    modification time (whole seconds; NULL for 0-byte files, which have no
    scanned time). Rows of images that changed or disappeared are stale: their
    batches are rewritten without them.
    """

    todo: tuple[str, ...]
    reused: int
    stale_paths: frozenset[str]
    stale_batches: frozenset[str]

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo and not self.stale_batches


def plan_increment(
    image_paths: Sequence[str], versions: dict[str, tuple[int, int]], committed_rows: Sequence
) -> Increment:
    """``committed_rows`` have path, size_bytes, modified (datetime or None) and batch."""
    listed = set(image_paths)
    done, stale_paths, stale_batches = set(), set(), set()
    for row in committed_rows:
        size, mtime = versions.get(row.path, (None, None))
        unchanged = (
            row.path in listed
            and size == row.size_bytes
            and (row.modified is None or int(row.modified.timestamp()) == mtime)
        )
        if unchanged:
            done.add(row.path)
        else:
            stale_paths.add(row.path)
            stale_batches.add(row.batch)
    todo = tuple(path for path in image_paths if path not in done)
    return Increment(todo, len(done), frozenset(stale_paths), frozenset(stale_batches))


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
    model: PipelineModel
    k: int
    explained_variance: list[float]

    @property
    def cumulative_at_k(self) -> float:
        return float(sum(self.explained_variance[: self.k]))


def fit_pca(features: DataFrame, k: int | None = None, target_variance: float = 0.95) -> PcaResult:
    """Fit PCA once and return a model that outputs ``pca`` with the chosen k.

    Spark's PCA cost is one pass to build the 1280x1280 covariance plus a local
    eigendecomposition; k only slices the result. So with a variance target it
    fits all components once, picks k from the spectrum, and appends a
    VectorSlicer that keeps the first k: one pass over the data, not two fits.
    With an explicit k it fits that k directly.
    """
    dimension = len(features.select("features").first()["features"])
    if k is not None:
        pca = PCA(k=min(k, dimension), inputCol="features", outputCol="pca").fit(features)
        return PcaResult(PipelineModel([pca]), pca.getK(), [float(v) for v in pca.explainedVariance])
    pca = PCA(k=dimension, inputCol="features", outputCol="pca_all").fit(features)
    spectrum = [float(v) for v in pca.explainedVariance]
    chosen = choose_k(spectrum, target_variance)
    slicer = VectorSlicer(inputCol="pca_all", outputCol="pca", indices=list(range(chosen)))
    return PcaResult(PipelineModel([pca, slicer]), chosen, spectrum)


def project(features: DataFrame, pca: PcaResult) -> DataFrame:
    return pca.model.transform(features).select("path", "label", "pca")
