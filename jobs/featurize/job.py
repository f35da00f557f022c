"""Command line and orchestration: read images, featurize, write, fit PCA, write, manifest.

    spark-submit --py-files featurize.zip jobs/featurize_images.py \\
        --input s3a://BUCKET/images/ --output s3a://BUCKET/runs/ --weights imagenet
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import pwd
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from functools import reduce
from importlib import metadata

from featurize import __version__
from featurize.batch import FeaturizeSettings
from featurize.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from featurize.model import FEATURE_DIM, WeightsNotFoundError, check_weights
from featurize.storage import Storage, join

log = logging.getLogger("featurize")
# Written after a batch of features and errors is complete: the batches a rerun can reuse.
COMMITS_FILE = "_batches.json"

# Measured on 2 cores (bench/): 1,024 images per task featurize 0.93 of the
# bare-TF limit, 256 per task 0.80-0.85, 64 per task 0.64; each task start has a
# fixed cost in the JVM and the Python worker that small tasks repeat.
DEFAULT_FILES_PER_PARTITION = 1024

EXIT_USAGE = 2
EXIT_FAILED = 1


class JobError(RuntimeError):
    """A failure the user can act on; its message is printed as one line."""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    return parse


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="featurize_images.py",
        description=(
            "Featurize images with MobileNetV2 (no top) in a pandas UDF, reduce them with "
            "pyspark.ml PCA, and write Parquet outputs under OUTPUT/RUN_ID/."
        ),
        epilog=(
            "Images: files ending in " + ", ".join(IMAGE_EXTENSIONS) + " (any case), found "
            "recursively; the label is the parent folder's name. "
            "S3 endpoint and credentials come from Spark's s3a settings and the AWS "
            "credential chain (instance profile on EC2), never from arguments."
        ),
    )
    parser.add_argument("--input", required=True, help="image root: s3a://BUCKET/PREFIX/, file:///DIR/ or a path")
    parser.add_argument("--output", required=True, help="output root; the run writes OUTPUT/RUN_ID/")
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet (Keras cache file, provisioned on hosts), none (random init, offline tests) "
        "or PATH to a weights file (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=_bounded_int(32, 1024),
        default=224,
        help="square input size of the CNN in pixels (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_bounded_int(1, 4096),
        default=32,
        help="images per CNN call and per Arrow batch (default: %(default)s)",
    )
    pca = parser.add_mutually_exclusive_group()
    pca.add_argument(
        "--pca-variance",
        type=_fraction,
        default=0.95,
        help="keep the fewest components reaching this explained variance (default: %(default)s)",
    )
    pca.add_argument("--pca-k", type=_bounded_int(1, FEATURE_DIM), help="keep exactly this many components")
    parser.add_argument("--run-id", default=None, help="name of the run folder (default: UTC timestamp)")
    parser.add_argument(
        "--max-image-pixels",
        type=_bounded_int(1, 2**31),
        default=DEFAULT_MAX_PIXELS,
        help="refuse images with more pixels, checked before decoding (default: %(default)s)",
    )
    parser.add_argument(
        "--files-per-partition",
        type=_bounded_int(1, 100_000),
        default=DEFAULT_FILES_PER_PARTITION,
        help="images per Spark task (default: %(default)s)",
    )
    parser.add_argument(
        "--tf-threads",
        type=_bounded_int(1, 256),
        default=None,
        help="TensorFlow threads per task (default: spark.task.cpus)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args(argv)
    if args.pca_k is not None:
        args.pca_variance = None
    args.run_id = args.run_id or default_run_id()
    if "/" in args.run_id or not args.run_id.strip():
        parser.error(f"--run-id must be a non-empty name without '/': {args.run_id!r}")
    return args


class StageClock:
    """Times stages and logs one line per stage, so long runs show progress."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        log.info("stage %s: started", name)
        started = time.perf_counter()
        details: dict[str, object] = {}
        yield details
        elapsed = time.perf_counter() - started
        self.seconds[name] = round(elapsed, 3)
        extra = " ".join(f"{key}={value}" for key, value in details.items())
        log.info("stage %s: done in %.1fs %s", name, elapsed, extra)


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


def run(spark, args: argparse.Namespace) -> dict:
    """Run the pipeline and return the manifest it wrote."""
    from pyspark.errors import AnalysisException

    from featurize import pipeline

    started_at = datetime.now(timezone.utc)
    clock = StageClock()
    conf = spark.sparkContext.getConf()
    storage = Storage(endpoint_url=conf.get("spark.hadoop.fs.s3a.endpoint", None))
    run_uri = join(args.output, args.run_id)
    manifest_uri, commits_uri = join(run_uri, "manifest.json"), join(run_uri, COMMITS_FILE)
    features_uri, errors_uri = join(run_uri, "features"), join(run_uri, "errors")
    for uri in (args.input, args.output):
        storage.check_bucket(uri)
    storage.check_writable(run_uri)
    committed = json.loads(storage.read_bytes(commits_uri))["batches"] if storage.exists(commits_uri) else []
    for root in (features_uri, errors_uri):
        for name in storage.list_dirs(root):
            if name.removeprefix("batch=") not in committed:
                log.info("removing %s/%s, left by an attempt that did not commit", root, name)
                storage.delete_tree(join(root, name))

    settings = FeaturizeSettings(
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_pixels=args.max_image_pixels,
        tf_threads=args.tf_threads or int(conf.get("spark.task.cpus", "1")),
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size))

    with clock.stage("list") as details:
        try:
            stats = pipeline.list_inputs(spark, args.input)
        except AnalysisException as exc:
            if "PATH_NOT_FOUND" not in str(exc):
                raise
            raise JobError(f"no image files under {args.input}: the path does not exist") from exc
        details.update(files=stats.files, images=stats.images, ignored=stats.ignored)
    if stats.images == 0:
        raise JobError(f"no image files under {args.input} (looked for {', '.join(IMAGE_EXTENSIONS)})")

    with clock.stage("plan") as details:
        increment = plan_attempt(spark, storage, args.input, stats, features_uri, errors_uri, committed)
        details.update(committed_batches=len(committed), reused=increment.reused, todo=len(increment.todo))
    if increment.nothing_to_do and storage.exists(manifest_uri):
        log.info("run %s is up to date at %s: no new, changed or removed images", args.run_id, manifest_uri)
        return json.loads(storage.read_bytes(manifest_uri))
    # From here on the run changes: it is not complete until a new manifest is written.
    storage.delete(manifest_uri)

    sc = spark.sparkContext
    decode_seconds, cnn_seconds = sc.accumulator(0.0), sc.accumulator(0.0)
    if not increment.nothing_to_do:
        batch = new_batch_id()
        with clock.stage("featurize_and_write_features") as details:
            partitions = pipeline.plan_partitions(
                spark, len(increment.todo), args.files_per_partition, stats.average_bytes
            )
            write_batch(
                spark, args.input, increment, committed, settings, (decode_seconds, cnn_seconds), run_uri, batch
            )
            details.update(
                batch=batch,
                partitions=partitions,
                decode_cpu_s=round(decode_seconds.value, 1),
                cnn_cpu_s=round(cnn_seconds.value, 1),
            )
        committed = [*sorted(set(committed) - increment.stale_batches), batch]
        storage.write_bytes(commits_uri, json.dumps({"batches": committed}).encode(), "application/json")
        for stale in increment.stale_batches:
            for root in (features_uri, errors_uri):
                storage.delete_tree(join(root, f"batch={stale}"))

    with clock.stage("verify_counts") as details:
        features = pipeline.read_batches(spark, features_uri, committed).drop("batch")
        featurized = features.count()
        error_rows = pipeline.read_batches(spark, errors_uri, committed).drop("batch")
        errors = error_rows.count()
        labels = {row["label"]: row["count"] for row in features.groupBy("label").count().collect()}
        details.update(featurized=featurized, errors=errors, classes=len(labels))
    if featurized + errors != stats.images:
        raise JobError(
            f"accounting mismatch: {stats.images} images listed but {featurized} featurized "
            f"+ {errors} errors written; the run is not marked complete"
        )
    if featurized < 2:
        raise JobError(f"PCA needs at least 2 featurized images, got {featurized} (see {errors_uri})")

    with clock.stage("pca_fit") as details:
        pca = pipeline.fit_pca(features, k=args.pca_k, target_variance=args.pca_variance or 0.95)
        details.update(k=pca.k, explained=round(pca.cumulative_at_k, 4))
    with clock.stage("pca_write"):
        pipeline.project(features, pca).write.mode("overwrite").parquet(join(run_uri, "pca"))
        pca.model.write().overwrite().save(join(run_uri, "pca_model"))

    wall = sum(clock.seconds.values())
    manifest: dict = {
        "run_id": args.run_id,
        "status": "complete",
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": args.input,
        "output": run_uri,
        "host": {"name": platform.node(), "user": pwd.getpwuid(os.geteuid()).pw_name},
        "parameters": {
            **asdict(settings),
            "pca_variance": args.pca_variance,
            "pca_k": args.pca_k,
            "files_per_partition": args.files_per_partition,
            "spark_master": sc.master,
            "default_parallelism": sc.defaultParallelism,
        },
        "versions": library_versions(),
        "incremental": {
            "detection": "path + size + modification time (whole seconds)",
            "batches": committed,
            "reused_images": increment.reused,
            "featurized_now": len(increment.todo),
            "dropped_stale_rows": len(increment.stale_paths - set(increment.todo)),
        },
        "counts": {
            "files": stats.files,
            "ignored_non_images": stats.ignored,
            "inputs": stats.images,
            "featurized": featurized,
            "errors": errors,
            "classes": len(labels),
            "per_class": dict(sorted(labels.items(), key=lambda item: str(item[0]))),
        },
        "pca": {
            "k": pca.k,
            "target_variance": args.pca_variance,
            "explained_variance_at_k": pca.cumulative_at_k,
            "explained_variance": pca.explained_variance,
        },
        "timing": {
            "stages_seconds": clock.seconds,
            "worker_cpu_seconds": {"decode": decode_seconds.value, "cnn": cnn_seconds.value},
            "wall_seconds": round(wall, 3),
            "images_per_second": round(stats.images / wall, 2) if wall else None,
        },
        "outputs": {name: join(run_uri, name) for name in ("features", "errors", "pca", "pca_model")},
    }
    with clock.stage("report") as details:
        manifest["outputs"]["report"] = write_report(storage, manifest, run_uri, features, error_rows, pca)
        details.update(uri=manifest["outputs"]["report"])
    # Written last: a run without manifest.json is not complete, whatever else is there.
    storage.write_bytes(manifest_uri, json.dumps(manifest, indent=2).encode(), "application/json")
    log.info(
        "run %s complete: %d images, %d featurized, %d errors, k=%d (%.1f%% variance), %.1f img/s, manifest %s",
        args.run_id,
        stats.images,
        featurized,
        errors,
        pca.k,
        100 * pca.cumulative_at_k,
        manifest["timing"]["images_per_second"],
        manifest_uri,
    )
    return manifest


def new_batch_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def plan_attempt(spark, storage: Storage, input_uri, stats, features_uri, errors_uri, committed):
    """Compare the inputs listed now with the rows earlier attempts committed."""
    from featurize import pipeline

    if not committed:
        return pipeline.Increment(stats.image_paths, 0, frozenset(), frozenset())
    columns = ["path", "size_bytes", "modified", "batch"]
    rows = (
        pipeline.read_batches(spark, features_uri, committed)
        .select(columns)
        .unionByName(pipeline.read_batches(spark, errors_uri, committed).select(columns))
        .collect()
    )
    return pipeline.plan_increment(stats.image_paths, storage.file_versions(input_uri), rows)


def write_batch(spark, input_uri, increment, committed, settings, accumulators, run_uri, batch) -> None:
    """Featurize the images to do, carry over the live rows of stale batches, write both as batch=BATCH."""
    from pyspark import StorageLevel
    from pyspark.sql import DataFrame
    from pyspark.sql import functions as F

    from featurize import pipeline

    # A first attempt reads the folder (one LIST); a later one only the files it has to do.
    only = increment.todo if committed else None
    results = None
    new_rows = {"features": [], "errors": []}
    if increment.todo:
        udf = pipeline.make_featurize_udf(settings, *accumulators)
        results = pipeline.featurize(pipeline.load_images(spark, input_uri, only), udf)
        # Features and errors come from one CNN pass: cache it on disk, not in a 4 GB heap.
        results.persist(StorageLevel.DISK_ONLY)
        new_rows["features"].append(pipeline.features_of(results))
        new_rows["errors"].append(
            pipeline.errors_of(results).unionByName(pipeline.unread_images(spark, increment.todo, results, input_uri))
        )
    stale = sorted(increment.stale_batches)
    try:
        for output, parts in new_rows.items():
            uri = join(run_uri, output)
            if stale:
                previous = pipeline.read_batches(spark, uri, stale).drop("batch")
                parts.append(previous.where(~F.col("path").isin(*increment.stale_paths)))
            reduce(DataFrame.unionByName, parts).write.mode("overwrite").parquet(join(uri, f"batch={batch}"))
    finally:
        if results is not None:
            results.unpersist()


def write_report(storage: Storage, manifest: dict, run_uri: str, features, errors, pca) -> str | None:
    """Plots and HTML from aggregates and a bounded uniform sample; a failure never fails the run.

    The scatter projects the sample with the fitted PCA stage itself, so PC 2 is
    shown even when the variance target keeps a single component.
    """
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F

    from featurize.report import SCATTER_SAMPLE, build_report

    try:
        featurized = manifest["counts"]["featurized"]
        fraction = min(1.0, 1.2 * SCATTER_SAMPLE / max(featurized, 1))
        pca_stage = pca.model.stages[0]
        sample = (
            pca_stage.transform(features.sample(fraction=fraction, seed=0).limit(SCATTER_SAMPLE))
            .select(vector_to_array(pca_stage.getOutputCol()).alias("pc"), "label")
            .collect()
        )
        points = [(row.pc[0], row.pc[1] if len(row.pc) > 1 else 0.0, row.label) for row in sample]
        reasons = errors.groupBy("reason").count().orderBy(F.desc("count"))
        errors_by_reason = {row["reason"]: row["count"] for row in reasons.limit(30).collect()}
        report_uri = join(run_uri, "report")
        for name, data in build_report(manifest, points, errors_by_reason).items():
            content_type = "text/html" if name.endswith(".html") else "image/png"
            storage.write_bytes(join(report_uri, name), data, content_type)
        return join(report_uri, "report.html")
    except Exception:  # the data outputs are complete; a plotting problem must not discard them
        log.exception("report could not be written; the run's data outputs are complete")
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        check_weights(args.weights, args.image_size)
    except WeightsNotFoundError as exc:
        log.error("%s", exc)
        return EXIT_USAGE

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"featurize-{args.run_id}").getOrCreate()
    try:
        run(spark, args)
    except (JobError, FileNotFoundError, PermissionError) as exc:
        log.error("run %s failed: %s", args.run_id, exc)
        return EXIT_FAILED
    finally:
        spark.stop()
    return 0
