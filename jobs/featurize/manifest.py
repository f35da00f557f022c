"""The run's manifest: what ran, on what, with which settings, what came out, and how long it took.

Written last: a run folder without manifest.json is not complete, whatever else is in it.
"""

from __future__ import annotations

import logging
import os
import platform
import pwd
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone

from featurize import __version__, cost
from featurize.commits import ERRORS, FEATURES, RETRY, Commit, Plan, read_error_rows
from featurize.context import RunContext
from featurize.fetch import READ_HINTS
from featurize.model import installed_version
from featurize.storage import join, request_counts

log = logging.getLogger("featurize")

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
    # From the package metadata: importing TensorFlow would cost the driver ~0.5 GB.
    # ai-edge-litert is the CNN runtime the converted model runs on.
    versions["ai-edge-litert"] = installed_version("ai-edge-litert") or "not installed on the driver"
    versions["tensorflow"] = installed_version("tensorflow-cpu", "tensorflow") or "not installed on the driver"
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


def count_rows(run: RunContext, *, files: int, images: int, live: list[Commit]) -> Counts:
    from featurize.pipeline import label_of

    kinds = Counter(kind for commit in live for _, _, kind in commit.rows)
    featurized = [path for commit in live for path, _, kind in commit.rows if kind == FEATURES]
    labels = Counter(label_of(path, run.root) for path in featurized)
    return Counts(
        files,
        images,
        len(featurized),
        kinds[ERRORS] + kinds[RETRY],
        dict(labels),
        retryable_errors=kinds[RETRY],
    )


def summarize_errors(run: RunContext, live: list[Commit]) -> tuple[dict[str, int], dict[str, dict]]:
    """The 30 commonest reasons, and per AWS error code: images, whether a rerun retries them, what to do."""
    reasons: Counter = Counter()
    codes: dict[str, dict] = {}
    for commit in live:
        if commit.errors:
            rows = read_error_rows(run.storage, commit)
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
        f"--run-id {run.config.run_id} to retry them (errors under {run.run_uri}/errors){hints}"
    )


def run_cost(run: RunContext) -> dict:
    """The run's cost estimate (featurize.cost) from what it measured so far: wall time, busy CPU, S3 requests.

    An estimate that cannot be made says why; it never fails a run whose outputs are written.
    """
    try:
        estimate = _estimate_cost(run)
    except Exception as exc:  # informational: the data outputs are complete, the run must not fail here
        log.warning("no cost estimate: %s", exc)
        estimate = {"basis": "none", "total_usd": None, "error": f"the estimate failed: {exc}"}
    # The one wording of the estimate: the job's log, run_job.yml and the demo print this line.
    return {**estimate, "summary": cost.summary_line(estimate)}


def _estimate_cost(run: RunContext) -> dict:
    from featurize.pipeline import s3a_request_counts

    boto3_requests = dict(Counter(run.requests.value) + Counter(request_counts())) if run.requests else request_counts()
    s3a_requests = s3a_request_counts(run.spark, run.run_uri)
    busy_now = cost.busy_cpu_seconds()
    busy = None if busy_now is None or run.busy_cpu_at_start is None else busy_now - run.busy_cpu_at_start
    estimate = cost.estimate(
        instance=cost.this_instance(),
        prices=cost.load_prices(run.config.prices),
        wall_seconds=(datetime.now(timezone.utc) - run.started_at).total_seconds(),
        busy_vcpu_seconds=busy,
        requests=cost.request_classes(boto3_requests, s3a_requests),
        stored_bytes=sum(listed.size for listed in run.storage.list_files(run.run_uri)),
        cpu_credits=run.config.cpu_credits,
        executor_hosts=len(set(run.featurized_by_host) - {platform.node()}),
    )
    estimate["requests_by_operation"] = {"boto3": boto3_requests, "s3a": cost.s3a_requests_named(s3a_requests)}
    return estimate


def run_manifest(run: RunContext, *, plan: Plan, live: list[Commit], counts: Counts, pca, pca_parts) -> dict:
    sc = run.spark.sparkContext
    config = run.config
    manifest = build_manifest(
        run_id=config.run_id,
        input_uri=config.input,
        run_uri=run.run_uri,
        started_at=run.started_at,
        parameters={
            "weights": config.weights,
            "image_size": config.image_size,
            "batch_size": config.cnn_batch_size,
            "runtime": config.runtime,
            "max_pixels": run.settings.max_pixels,
            "max_decode_bytes": run.settings.max_decode_bytes,
            "tf_threads": run.settings.tf_threads,
            "pca_variance": config.pca_variance,
            "pca_k": config.pca_k,
            "files_per_partition": config.files_per_partition,
            "commit_every": config.commit_every,
            "fetch_concurrency": config.fetch_concurrency,
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
            "target_variance": config.pca_variance,
            "explained_variance_at_k": pca.cumulative_at_k,
            "explained_variance": pca.explained_variance,
        },
        timing={
            "stages_seconds": run.clock.seconds,
            "worker_cpu_seconds": run.worker_cpu_seconds,
            "featurized_by_host": run.featurized_by_host,
            "warm_up": {
                "python_workers": run.warm_up.workers,
                "seconds": round(run.warm_up.seconds, 3),
                "models_built_by_featurize_tasks": run.models_built_by_featurize,
            },
        },
        outputs={"pca_parts": pca_parts, "commits": [commit.uri for commit in live]},
    )
    manifest["parameters"]["cpu_credits"] = config.cpu_credits
    manifest["cost"] = run_cost(run)
    return manifest
