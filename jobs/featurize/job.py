"""Orchestration of a run: list, lock, plan, featurize in committed chunks, verify, fit PCA, project, manifest.

It only sequences: the commit protocol is featurize.commits, the Spark stages
featurize.pipeline, the checks featurize.locations, the manifest
featurize.manifest, the PCA outputs and report featurize.publish, the
command line featurize.cli.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta

from featurize.batch import FeaturizeSettings
from featurize.commits import (
    ATTEMPTS_DIR,
    ERRORS,
    FEATURES,
    Commit,
    Plan,
    RunLock,
    compact_all,
    plan_run,
    read_commits,
    settle,
)
from featurize.config import JobConfig
from featurize.context import RunContext
from featurize.errors import JobError, UnreadInputsError
from featurize.fetch import FetchSettings
from featurize.fingerprint import settings_fingerprint
from featurize.images import IMAGE_EXTENSIONS, has_image_extension
from featurize.locations import canonical, check_no_overlap, check_spark_writes
from featurize.manifest import count_rows, run_manifest, summarize_errors, unread_message
from featurize.progress import PROGRESS_DIR, ProgressWatcher
from featurize.publish import ModelSave, fit_pca, write_pca, write_report
from featurize.storage import ListedFile, Storage, join
from featurize.warmup import WarmUp

log = logging.getLogger("featurize")

ARROW_BATCH_ROWS = 1024


def prepare(spark, config: JobConfig) -> RunContext:
    from featurize.pipeline import RequestCountsParam

    conf = spark.sparkContext.getConf()
    endpoint = conf.get("spark.hadoop.fs.s3a.endpoint", None)
    settings = FeaturizeSettings(
        weights=config.weights,
        image_size=config.image_size,
        batch_size=config.cnn_batch_size,
        runtime=config.runtime,
        max_pixels=config.max_image_pixels,
        max_decode_bytes=config.max_decode_mb * 2**20,
        tf_threads=config.tf_threads or int(conf.get("spark.task.cpus", "1")),
    )
    # The UDFs exchange paths and chunk summaries, or features read back (5 KB a row):
    # Spark's 10,000 rows would hold 50 MB of features per batch, tiny batches cost calls.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(ARROW_BATCH_ROWS))
    storage = Storage(endpoint)
    return RunContext(
        spark=spark,
        config=config,
        storage=storage,
        root=canonical(config.input),
        run_uri=join(canonical(config.output), config.run_id),
        settings=settings,
        fetch=FetchSettings(endpoint_url=endpoint, max_in_flight=config.fetch_concurrency),
        fingerprint=settings_fingerprint(settings),
        requests=spark.sparkContext.accumulator({}, RequestCountsParam()),
    )


def check_locations(run: RunContext) -> None:
    check_no_overlap(run.config.input, run.config.output)
    images_region = run.storage.check_bucket(run.config.input)
    run.storage.check_bucket(run.config.output)
    run.fetch = replace(run.fetch, region=images_region)
    run.storage.check_writable(run.run_uri)


@dataclass(frozen=True)
class Inputs:
    file_count: int
    images: list[ListedFile]


def is_input(path: str) -> bool:
    """An image by its name; content under a folder key too, so that it ends as an error row, not unseen."""
    return path.endswith("/") or has_image_extension(path.rsplit("/", 1)[-1])


def list_inputs(run: RunContext) -> Inputs:
    with run.clock.stage("list") as details:
        files = run.storage.list_files(run.config.input)
        images = [file for file in files if is_input(file.path)]
        details.update(files=len(files), images=len(images), ignored=len(files) - len(images))
    if not images:
        raise JobError(
            f"no image files under {run.config.input} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, recursively)"
        )
    return Inputs(len(files), images)


def execute(spark, config: JobConfig) -> dict:
    """Run the pipeline and return the manifest it wrote (or the unchanged one, when nothing changed)."""
    context = prepare(spark, config)
    check_locations(context)
    # Started once boto3 is loaded (see WarmUp), so that the workers' start and model load (about
    # 3 s) overlap the s3a check and the listing.
    context.warm_up = WarmUp(spark, context.settings)
    try:
        check_spark_writes(context.spark, context.storage, context.run_uri)
        inputs = list_inputs(context)
        lock = RunLock(
            context.storage, context.run_uri, ttl=timedelta(hours=config.lock_ttl_hours), break_lock=config.break_lock
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
    parts = {f.path: f.size for kind in (FEATURES, ERRORS) for f in run.storage.list_files(join(run.run_uri, kind))}
    return plan_run(images, commits, fingerprint=run.fingerprint, parts=parts, retry=retry)


def read_previous_manifest(run: RunContext) -> dict | None:
    data = run.storage.read_if_exists(run.manifest_uri)
    return json.loads(data) if data else None


def same_pca_options(manifest: dict, config: JobConfig) -> bool:
    parameters = manifest["parameters"]
    return (parameters["pca_k"], parameters["pca_variance"]) == (config.pca_k, config.pca_variance)


def run_locked(run: RunContext, inputs: Inputs) -> dict:
    previous = read_previous_manifest(run)
    with run.clock.stage("plan") as details:
        plan = make_plan(run, inputs.images)
        details.update(reused=plan.reused, todo=len(plan.todo), rewrite=len(plan.compact), drop=len(plan.drop))
    for commit in plan.missing:
        log.warning("%s names parts that are gone: its %d images are featurized again", commit.uri, len(commit.rows))
    fresh = previous is not None and previous["incremental"]["fingerprint"] == run.fingerprint
    if plan.up_to_date and fresh and same_pca_options(previous, run.config):
        log.info("run %s is up to date at %s: nothing new, changed or removed", run.config.run_id, run.manifest_uri)
        return previous
    # From here on the run changes: it is not complete until a new manifest is written.
    run.storage.delete(run.manifest_uri)
    compact_all(run.storage, run.run_uri, plan)
    featurize_todo(run, plan.todo)
    live = verify(run, inputs)
    settle(run.storage, run.run_uri, plan=plan, live=live)
    return finish(run, inputs, plan=plan, live=live)


def featurize_todo(run: RunContext, todo: list[ListedFile]) -> None:
    from featurize import pipeline

    if not todo:
        return
    sc = run.spark.sparkContext
    decode_seconds, cnn_seconds, models_built = sc.accumulator(0.0), sc.accumulator(0.0), sc.accumulator(0)
    tasks = pipeline.task_count(run.spark, len(todo), run.config.files_per_partition)
    attempts = join(run.run_uri, ATTEMPTS_DIR)
    started = f"{run.started_at:%Y%m%dT%H%M%S%f}"
    progress_records = join(run.run_uri, PROGRESS_DIR, started)
    chunks = pipeline.ChunkSettings(
        run.run_uri,
        run.fingerprint,
        run.config.commit_every,
        attempt_records=join(attempts, started),
        progress_records=progress_records,
    )
    task = pipeline.make_featurize_task(
        run.settings,
        run.fetch,
        chunks,
        decode_seconds=decode_seconds,
        cnn_seconds=cnn_seconds,
        models_built=models_built,
        requests=run.requests,
    )
    with run.clock.stage("warm_up") as details:
        run.warm_up.wait()
        details.update(workers=run.warm_up.workers, job_s=round(run.warm_up.seconds, 1))
    with (
        run.clock.stage("featurize") as details,
        ProgressWatcher(run.storage, run.run_uri, progress_records, total=len(todo)),
    ):
        began = time.perf_counter()
        # The name the Spark UI and its REST API show for this job (else "collect at NativeMethodAccessorImpl").
        sc.setJobDescription(f"featurize {len(todo)} images in {tasks} tasks")
        try:
            committed = pipeline.featurize(run.spark, todo, root=run.root, tasks=tasks, featurize_task=task)
        finally:
            sc.setJobDescription(None)
        rate = len(todo) / (time.perf_counter() - began)
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
    # Records of retried tasks, this run's and any a killed run left, are of no use once the stage is done.
    run.storage.delete_many(
        [
            listed.path
            for folder in (attempts, join(run.run_uri, PROGRESS_DIR))
            for listed in run.storage.list_files(folder)
        ]
    )
    run.worker_cpu_seconds = {"decode": decode_seconds.value, "cnn": cnn_seconds.value}
    by_host: Counter[str] = Counter()
    for row in committed:
        by_host[row.host] += row.featurized
    run.featurized_by_host = dict(sorted(by_host.items()))
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


def finish(run: RunContext, inputs: Inputs, *, plan: Plan, live: list[Commit]) -> dict:
    from featurize import pipeline

    counts = count_rows(run, files=inputs.file_count, images=len(inputs.images), live=live)
    reasons, codes = summarize_errors(run, live)
    if counts.featurized < 2 and counts.retryable_errors:
        raise UnreadInputsError(unread_message(run, counts, codes))
    if counts.featurized < 2:
        raise JobError(f"PCA needs at least 2 featurized images, got {counts.featurized} (see {run.run_uri}/errors)")
    features = pipeline.persist_on_disk(
        pipeline.read_features(run.spark, live, run.fetch.endpoint_url, requests=run.requests)
    )
    model_save = None
    try:
        pca = fit_pca(run, features)
        # Saved in a thread from here on: its s3a writes (seconds over S3) overlap the projection and the report.
        model_save = ModelSave(run, pca)
        pca_parts = write_pca(run, features, pca)
        manifest = run_manifest(run, plan=plan, live=live, counts=counts, pca=pca, pca_parts=pca_parts)
        manifest["errors_by_code"] = codes
        if counts.retryable_errors:
            manifest["status"] = "complete_but_retryable_errors"
        with run.clock.stage("report") as details:
            report = write_report(run, manifest, features=features, reasons=reasons, pca=pca)
            manifest["outputs"]["report"] = report
            details.update(uri=report, pca_model_s=round(model_save.wait(), 1))
    finally:
        if model_save:
            model_save.join()
        # Blocking: spark.stop() follows, and would race the removal of the blocks (warnings on the console).
        features.unpersist(blocking=True)
    # Written last: a run without manifest.json is not complete, whatever else is there.
    if run.lock:
        run.lock.check()
    run.storage.write_bytes(run.manifest_uri, json.dumps(manifest, indent=2).encode(), "application/json")
    log.info(
        "run %s complete: %d images, %d featurized, %d errors, k=%d (%.1f%% variance), %.1f img/s, manifest %s",
        run.config.run_id,
        counts.inputs,
        counts.featurized,
        counts.errors,
        pca.k,
        100 * pca.cumulative_at_k,
        manifest["timing"]["images_per_second"] or 0.0,
        run.manifest_uri,
    )
    log.info("%s", manifest["cost"]["summary"])
    if counts.retryable_errors:
        raise UnreadInputsError(unread_message(run, counts, codes))
    return manifest
