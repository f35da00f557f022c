"""Orchestration of a run: list, lock, plan, featurize in committed chunks, verify, fit PCA, project, manifest.

Each step is a short function; the commit protocol is featurize.commits, the
Spark stages featurize.pipeline, the command line featurize.cli.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from featurize import __version__
from featurize.batch import FeaturizeSettings
from featurize.commits import (
    ERRORS,
    FEATURES,
    RETRY,
    Commit,
    Plan,
    RunLock,
    compact,
    plan_run,
    read_commits,
    remove_leftovers,
)
from featurize.errors import JobError, LocationsOverlapError, StorageError, UnreadInputsError
from featurize.fetch import READ_HINTS, FetchSettings
from featurize.images import IMAGE_EXTENSIONS, has_image_extension
from featurize.manifest import Counts, build_manifest
from featurize.model import imagenet_weights_path
from featurize.storage import ListedFile, Storage, is_s3, join, local_path

log = logging.getLogger("featurize")

ARROW_BATCH_ROWS = 1024


class StageClock:
    """Times stages and logs one line per stage with its counts, so long runs show progress."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        details: dict[str, object] = {}
        yield details
        elapsed = time.perf_counter() - started
        self.seconds[name] = round(elapsed, 3)
        extra = " ".join(f"{key}={value}" for key, value in details.items())
        log.info("stage %-9s %6.1fs  %s", name, elapsed, extra)


@dataclass
class RunContext:
    """What every step of one run needs."""

    spark: object
    args: argparse.Namespace
    storage: Storage
    root: str
    run_uri: str
    settings: FeaturizeSettings
    fetch: FetchSettings
    fingerprint: str
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: StageClock = field(default_factory=StageClock)
    warm_up: WarmUp | None = None
    lock: RunLock | None = None
    models_built_by_featurize: int = 0
    worker_cpu_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "cnn": 0.0})

    @property
    def manifest_uri(self) -> str:
        return join(self.run_uri, "manifest.json")


def canonical(uri: str) -> str:
    """A folder URI as listed paths spell it: ``s3a://bucket/prefix`` or ``file:/abs/dir``, no trailing slash."""
    return uri.rstrip("/") if is_s3(uri) else "file:" + str(local_path(uri)).rstrip("/")


# The modules whose code decides what a feature vector is.
FEATURIZING_MODULES = ("images.py", "batch.py", "model.py")


def featurizing_code() -> dict[str, str]:
    """sha256 of the decoding and CNN code (read through the import system: the job may run from a zip), and the
    versions of the libraries that compute the features."""
    from importlib import metadata, resources

    package = resources.files("featurize")
    code = hashlib.sha256(b"".join((package / name).read_bytes() for name in FEATURIZING_MODULES)).hexdigest()
    versions = {}
    for distribution in ("pillow", "keras", "tensorflow-cpu", "tensorflow"):
        try:
            versions[distribution] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            versions[distribution] = None
    return {"code": code[:16], **versions}


def settings_fingerprint(settings: FeaturizeSettings) -> str:
    """What makes two feature vectors comparable: weights content, input size, decode limits, the featurizing
    code and its libraries."""
    weights = settings.weights
    if weights != "none":
        path = imagenet_weights_path(settings.image_size) if weights == "imagenet" else Path(weights)
        weights = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    identity = {
        "model": "MobileNetV2(include_top=False, pooling=avg)",
        "weights": weights,
        "image_size": settings.image_size,
        "max_pixels": settings.max_pixels,
        "max_decode_bytes": settings.max_decode_bytes,
        "job": __version__,
        "featurizing_code": featurizing_code(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def prepare(spark, args: argparse.Namespace) -> RunContext:
    conf = spark.sparkContext.getConf()
    endpoint = conf.get("spark.hadoop.fs.s3a.endpoint", None)
    settings = FeaturizeSettings(
        weights=args.weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        max_pixels=args.max_image_pixels,
        max_decode_bytes=args.max_decode_mb * 2**20,
        tf_threads=args.tf_threads or int(conf.get("spark.task.cpus", "1")),
    )
    # The UDFs exchange paths and chunk summaries, or features read back (5 KB a row):
    # Spark's 10,000 rows would hold 50 MB of features per batch, tiny batches cost calls.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    storage = Storage(endpoint)
    return RunContext(
        spark=spark,
        args=args,
        storage=storage,
        root=canonical(args.input),
        run_uri=join(canonical(args.output), args.run_id),
        settings=settings,
        fetch=FetchSettings(endpoint_url=endpoint, max_in_flight=args.fetch_concurrency),
        fingerprint=settings_fingerprint(settings),
    )


def check_no_overlap(input_uri: str, output_uri: str) -> None:
    """Refuse an output inside the input (the run would read its own outputs) or around it."""
    images, outputs = canonical(input_uri) + "/", canonical(output_uri) + "/"
    if images.startswith(outputs) or outputs.startswith(images):
        raise LocationsOverlapError(
            f"--output {output_uri} and --input {input_uri} overlap: a run would list its own outputs as images "
            "(or a later run's inputs would hold them). Use sibling prefixes, e.g. s3a://BUCKET/images/ and "
            "s3a://BUCKET/runs/"
        )


def check_spark_writes(run: RunContext) -> None:
    """Write and remove a one-row Parquet file through Spark's own filesystem (s3a), which saves pca_model.

    Missing or mismatched s3a jars, or credentials that boto3 finds and s3a
    does not, would otherwise fail the run at its very end.
    """
    if not is_s3(run.run_uri):
        return
    probe = join(run.run_uri, "_s3a_probe")
    try:
        run.spark.range(1).coalesce(1).write.mode("overwrite").parquet(probe)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        cause = next((line for line in lines if line.startswith(": ")), lines[0]).lstrip(": ")
        raise StorageError(
            f"Spark cannot write to {run.run_uri} through s3a ({cause[:300]}): check the s3a jars on the classpath "
            "(roles/s3a_jars) and that s3a finds the same credentials as boto3; nothing was computed"
        ) from exc
    finally:
        run.storage.delete_many([listed.path for listed in run.storage.list_files(probe)] + [probe + "/"])


def check_locations(run: RunContext) -> None:
    check_no_overlap(run.args.input, run.args.output)
    for uri in (run.args.input, run.args.output):
        run.storage.check_bucket(uri)
    run.storage.check_writable(run.run_uri)
    check_spark_writes(run)


class WarmUp:
    """Builds the model in the executors' Python workers while the driver lists, locks and plans.

    A failure here is only logged: the featurize tasks build the model
    themselves and report the real error.
    """

    GROUP = "fruitcloud-warm-up"

    def __init__(self, spark, settings: FeaturizeSettings):
        from pyspark import InheritableThread

        from featurize.pipeline import warm_up_frame

        # The plan is built here and only collected in the thread: building it imports
        # pyspark.ml and pandas UDF modules, and a run deadlocked when that thread and the
        # main thread (botocore) imported at once (setuptools' vendored importer, pulled in
        # by pyspark.ml, escapes Python's import locks).
        frame = warm_up_frame(spark, settings)
        self.spark = spark
        self.workers = 0
        self.seconds = 0.0
        self._thread = InheritableThread(target=self._run, args=(frame,), daemon=True)
        self._thread.start()

    def _run(self, frame) -> None:
        self.spark.sparkContext.setJobGroup(self.GROUP, "build the CNN in every Python worker", True)
        started = time.perf_counter()
        try:
            self.workers = len(frame.collect())
        except Exception as exc:  # the featurize stage raises the real error, with its context
            log.warning("warming up the Python workers failed; the featurize tasks build the model: %s", exc)
        self.seconds = time.perf_counter() - started

    def wait(self) -> None:
        self._thread.join()

    def cancel(self) -> None:
        self.spark.sparkContext.cancelJobGroup(self.GROUP)
        self._thread.join()


@dataclass(frozen=True)
class Inputs:
    files: int
    images: list[ListedFile]


def list_inputs(run: RunContext) -> Inputs:
    with run.clock.stage("list") as details:
        files = run.storage.list_files(run.args.input)
        images = [file for file in files if has_image_extension(file.path.rsplit("/", 1)[-1])]
        details.update(files=len(files), images=len(images), ignored=len(files) - len(images))
    if not images:
        raise JobError(
            f"no image files under {run.args.input} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively)"
        )
    return Inputs(len(files), images)


def run(spark, args: argparse.Namespace) -> dict:
    """Run the pipeline and return the manifest it wrote (or the unchanged one, when nothing changed)."""
    context = prepare(spark, args)
    check_locations(context)
    context.warm_up = WarmUp(spark, context.settings)
    try:
        inputs = list_inputs(context)
        lock = RunLock(
            context.storage, context.run_uri, ttl=timedelta(hours=args.lock_ttl_hours), break_lock=args.break_lock
        )
        lock.acquire()
        context.lock = lock
        try:
            return run_locked(context, inputs)
        finally:
            lock.release()
    finally:
        context.warm_up.cancel()


def make_plan(run: RunContext, images: list[ListedFile], *, retry: bool = True) -> Plan:
    commits = read_commits(run.storage, run.run_uri)
    parts = {f.path for kind in (FEATURES, ERRORS) for f in run.storage.list_files(join(run.run_uri, kind))}
    return plan_run(images, commits, fingerprint=run.fingerprint, parts=parts, retry=retry)


def read_previous_manifest(run: RunContext) -> dict | None:
    data = run.storage.read_if_exists(run.manifest_uri)
    return json.loads(data) if data else None


def same_pca_options(manifest: dict, args: argparse.Namespace) -> bool:
    parameters = manifest["parameters"]
    return (parameters["pca_k"], parameters["pca_variance"]) == (args.pca_k, args.pca_variance)


def run_locked(run: RunContext, inputs: Inputs) -> dict:
    previous = read_previous_manifest(run)
    with run.clock.stage("plan") as details:
        plan = make_plan(run, inputs.images)
        details.update(reused=plan.reused, todo=len(plan.todo), rewrite=len(plan.compact), drop=len(plan.drop))
    for commit in plan.missing:
        log.warning("%s names parts that are gone: its %d images are featurized again", commit.uri, len(commit.rows))
    fresh = previous is not None and previous["incremental"]["fingerprint"] == run.fingerprint
    if plan.up_to_date and fresh and same_pca_options(previous, run.args):
        log.info("run %s is up to date at %s: nothing new, changed or removed", run.args.run_id, run.manifest_uri)
        return previous
    # From here on the run changes: it is not complete until a new manifest is written.
    run.storage.delete(run.manifest_uri)
    for commit, kept in plan.compact:
        compact(run.storage, run.run_uri, commit=commit, kept=kept)
    featurize_todo(run, plan.todo)
    live = verify(run, inputs)
    # A record this run rewrote under the same name (its chunk redone with the same rows) is live again.
    rewritten = {commit.uri for commit in live}
    obsolete = [commit for commit in [*plan.drop, *plan.missing] if commit.uri not in rewritten]
    remove_leftovers(run.storage, run.run_uri, live=live, obsolete=obsolete)
    return finish(run, inputs, plan=plan, live=live)


def featurize_todo(run: RunContext, todo: list[ListedFile]) -> None:
    from featurize import pipeline

    if not todo:
        return
    sc = run.spark.sparkContext
    decode_seconds, cnn_seconds, models_built = sc.accumulator(0.0), sc.accumulator(0.0), sc.accumulator(0)
    tasks = pipeline.task_count(run.spark, len(todo), run.args.files_per_partition)
    chunks = pipeline.ChunkSettings(run.run_uri, run.fingerprint, run.args.commit_every)
    task = pipeline.make_featurize_task(
        run.settings,
        run.fetch,
        chunks,
        decode_seconds=decode_seconds,
        cnn_seconds=cnn_seconds,
        models_built=models_built,
    )
    if run.warm_up:
        with run.clock.stage("warm_up") as details:
            run.warm_up.wait()
            details.update(workers=run.warm_up.workers, job_s=round(run.warm_up.seconds, 1))
    with run.clock.stage("featurize") as details:
        started = time.perf_counter()
        committed = pipeline.featurize(run.spark, todo, root=run.root, tasks=tasks, featurize_task=task).collect()
        rate = len(todo) / (time.perf_counter() - started)
        details.update(
            images=len(todo),
            rate=f"{rate:.1f}/s",
            tasks=tasks,
            commits=len(committed),
            errors=sum(row.errors for row in committed),
            decode_cpu_s=round(decode_seconds.value, 1),
            cnn_cpu_s=round(cnn_seconds.value, 1),
            models_built=models_built.value,
        )
    run.worker_cpu_seconds = {"decode": decode_seconds.value, "cnn": cnn_seconds.value}
    run.models_built_by_featurize = models_built.value


def verify(run: RunContext, inputs: Inputs) -> list[Commit]:
    """Check that every listed image is in exactly one committed row before anything is published."""
    with run.clock.stage("verify") as details:
        # The retryable errors just written are accounted for; the next run retries them.
        plan = make_plan(run, inputs.images, retry=False)
        details.update(images=len(inputs.images), committed=plan.reused, commits=len(plan.live))
    if plan.todo or plan.compact or plan.missing:
        raise JobError(
            f"accounting mismatch: {len(inputs.images)} images listed but {plan.reused} committed "
            f"({len(plan.todo)} without a row, {len(plan.missing)} commits with missing parts); "
            "the committed chunks are kept and a rerun completes the run"
        )
    return plan.live


def count_rows(run: RunContext, inputs: Inputs, live: list[Commit]) -> Counts:
    from featurize.pipeline import label_of

    kinds = Counter(kind for commit in live for _, _, kind in commit.rows)
    featurized = [path for commit in live for path, _, kind in commit.rows if kind == FEATURES]
    labels = Counter(label_of(path, run.root) for path in featurized)
    return Counts(
        inputs.files,
        len(inputs.images),
        len(featurized),
        kinds[ERRORS] + kinds[RETRY],
        dict(labels),
        retryable_errors=kinds[RETRY],
    )


def summarize_errors(run: RunContext, live: list[Commit]) -> tuple[dict[str, int], dict[str, dict]]:
    """The 30 commonest reasons, and per AWS error code: images, whether a rerun retries them, what to do."""
    import io

    import pyarrow.parquet as pq

    reasons: Counter = Counter()
    codes: dict[str, dict] = {}
    for commit in live:
        if commit.errors:
            table = pq.read_table(io.BytesIO(run.storage.read_bytes(commit.errors)))
            rows = table.to_pylist()
            reasons.update(row["reason"] for row in rows)
            for row in rows:
                if row.get("code"):
                    entry = codes.setdefault(
                        row["code"],
                        {"images": 0, "retryable": bool(row.get("retryable")), "hint": READ_HINTS.get(row["code"], "")},
                    )
                    entry["images"] += 1
    return dict(reasons.most_common(30)), codes


def unread_message(run: RunContext, counts: Counts, codes: dict[str, dict]) -> str:
    retried = {code: entry for code, entry in codes.items() if entry["retryable"]}
    listed = ", ".join(f"{code} x{entry['images']}" for code, entry in retried.items())
    hints = "".join(f". {code}: {entry['hint']}" for code, entry in retried.items() if entry["hint"])
    return (
        f"{counts.retryable_errors} images could not be read this time ({listed}); rerun with "
        f"--run-id {run.args.run_id} to retry them (errors under {run.run_uri}/errors){hints}"
    )


def finish(run: RunContext, inputs: Inputs, *, plan: Plan, live: list[Commit]) -> dict:
    from featurize import pipeline

    counts = count_rows(run, inputs, live)
    reasons, codes = summarize_errors(run, live)
    if counts.featurized < 2 and counts.retryable_errors:
        raise UnreadInputsError(unread_message(run, counts, codes))
    if counts.featurized < 2:
        raise JobError(f"PCA needs at least 2 featurized images, got {counts.featurized} (see {run.run_uri}/errors)")
    features = pipeline.persist_on_disk(pipeline.read_features(run.spark, live, run.fetch.endpoint_url))
    try:
        pca = fit_pca(run, features)
        pca_parts = write_pca(run, features, pca)
        manifest = make_manifest(run, plan=plan, live=live, counts=counts, pca=pca, pca_parts=pca_parts)
        manifest["errors_by_code"] = codes
        if counts.retryable_errors:
            manifest["status"] = "complete_but_retryable_errors"
        with run.clock.stage("report") as details:
            report = write_report(run, manifest, features=features, reasons=reasons, pca=pca)
            manifest["outputs"]["report"] = report
            details.update(uri=report)
    finally:
        # Blocking: spark.stop() follows, and would race the removal of the blocks (warnings on the console).
        features.unpersist(blocking=True)
    # Written last: a run without manifest.json is not complete, whatever else is there.
    if run.lock:
        run.lock.check()
    run.storage.write_bytes(run.manifest_uri, json.dumps(manifest, indent=2).encode(), "application/json")
    log.info(
        "run %s complete: %d images, %d featurized, %d errors, k=%d (%.1f%% variance), %.1f img/s, manifest %s",
        run.args.run_id,
        counts.inputs,
        counts.featurized,
        counts.errors,
        pca.k,
        100 * pca.cumulative_at_k,
        manifest["timing"]["images_per_second"] or 0.0,
        run.manifest_uri,
    )
    if counts.retryable_errors:
        raise UnreadInputsError(unread_message(run, counts, codes))
    return manifest


def fit_pca(run: RunContext, features):
    from featurize import pipeline

    with run.clock.stage("pca_fit") as details:
        pca = pipeline.fit_pca(features, k=run.args.pca_k, target_variance=run.args.pca_variance or 0.95)
        details.update(k=pca.k, explained=round(pca.cumulative_at_k, 4))
    return pca


def write_pca(run: RunContext, features, pca) -> list[str]:
    from featurize import pipeline

    with run.clock.stage("pca_write") as details:
        output = join(run.run_uri, "pca")
        previous = [f.path for f in run.storage.list_files(output)]
        name = f"{run.fingerprint}-k{pca.k}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
        parts = pipeline.write_projection(
            run.spark, features, pca, uri=output, name=name, endpoint_url=run.fetch.endpoint_url
        )
        run.storage.delete_many([path for path in previous if path not in parts])
        pca.model.write().overwrite().save(join(run.run_uri, "pca_model"))
        details.update(parts=len(parts))
    return parts


def make_manifest(run: RunContext, *, plan: Plan, live: list[Commit], counts: Counts, pca, pca_parts) -> dict:
    sc = run.spark.sparkContext
    args = run.args
    return build_manifest(
        run_id=args.run_id,
        input_uri=args.input,
        run_uri=run.run_uri,
        started_at=run.started_at,
        parameters={
            "weights": args.weights,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "max_pixels": run.settings.max_pixels,
            "max_decode_bytes": run.settings.max_decode_bytes,
            "tf_threads": run.settings.tf_threads,
            "pca_variance": args.pca_variance,
            "pca_k": args.pca_k,
            "files_per_partition": args.files_per_partition,
            "commit_every": args.commit_every,
            "fetch_concurrency": args.fetch_concurrency,
            "spark_master": sc.master,
            "default_parallelism": sc.defaultParallelism,
        },
        incremental={
            "identity": "path + ETag from the listing + settings fingerprint",
            "fingerprint": run.fingerprint,
            "commits": len(live),
            "reused_images": plan.reused,
            "featurized_now": len(plan.todo),
            "rewritten_commits": len(plan.compact),
            "dropped_commits": len(plan.drop),
            "recomputed_missing_commits": len(plan.missing),
        },
        counts=counts,
        pca={
            "k": pca.k,
            "target_variance": args.pca_variance,
            "explained_variance_at_k": pca.cumulative_at_k,
            "explained_variance": pca.explained_variance,
        },
        timing={
            "stages_seconds": run.clock.seconds,
            "worker_cpu_seconds": run.worker_cpu_seconds,
            "warm_up": {
                "python_workers": run.warm_up.workers if run.warm_up else 0,
                "seconds": round(run.warm_up.seconds, 3) if run.warm_up else 0.0,
                "models_built_by_featurize_tasks": run.models_built_by_featurize,
            },
        },
        outputs={"pca_parts": pca_parts, "commits": [commit.uri for commit in live]},
    )


def write_report(run: RunContext, manifest: dict, *, features, reasons: dict[str, int], pca) -> str | None:
    """Plots and HTML from aggregates and a bounded uniform sample; a failure never fails the run.

    The scatter projects the sample with the fitted PCA stage itself, so PC 2 is
    shown even when the variance target keeps a single component.
    """
    from pyspark.ml.functions import vector_to_array

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
        report_uri = join(run.run_uri, "report")
        for name, data in build_report(manifest, points, reasons).items():
            content_type = "text/html" if name.endswith(".html") else "image/png"
            run.storage.write_bytes(join(report_uri, name), data, content_type)
        return join(report_uri, "report.html")
    except Exception:  # the data outputs are complete; a plotting problem must not discard them
        log.exception("report could not be written; the run's data outputs are complete")
        return None
