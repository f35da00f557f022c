"""Faults lose nothing: a killed run converges on rerun, S3 errors are retried, and so are dead workers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from harness.launcher import job_args, job_environment, run_job, spark_submit_command
from harness.s3proxy import faulty_s3

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def committed_rows(run: Path) -> int:
    rows = 0
    for record in (run / "_commits").glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            rows += len(json.loads(record.read_text())["rows"])
    return rows


@pytest.mark.parametrize("kill_at", ["80% featurized", "during PCA"])
def test_sigkill_then_rerun_converges(spark, sample_dir, tmp_path, kill_at):
    """A crash keeps every committed chunk: killed at 80 % of featurization, the rerun does at most 30 %."""
    images = tmp_path / "images"
    for name in ("Pear", "Kiwi", "Lemon"):
        shutil.copytree(sample_dir / name, images / name)
    total = sum(1 for _ in images.rglob("*.jpg"))
    out = tmp_path / "out"
    args = job_args(
        images.as_uri(), out.as_uri(), "killed", weights="none", image_size=64, files_per_partition=128, commit_every=32
    )
    log = tmp_path / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen(
            spark_submit_command(args, None),
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=job_environment(),
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while not (
            committed_rows(out / "killed") >= 0.8 * total
            if kill_at == "80% featurized"
            else "stage verify" in log.read_text()
        ):
            assert first.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "killed" / "manifest.json").exists(), "a killed run is never marked complete"
    done_before_rerun = committed_rows(out / "killed")

    assert run_job(args, endpoint=None).returncode == 0
    manifest = json.loads((out / "killed" / "manifest.json").read_text())
    features = spark.read.parquet(str(out / "killed" / "features"))
    paths = [row.path for row in features.select("path").collect()]
    expected = sorted(f"file:{p}" for p in images.rglob("*.jpg"))
    assert sorted(paths) == expected, "each image exactly once"
    assert manifest["counts"]["featurized"] == len(expected) == total
    assert spark.read.parquet(str(out / "killed" / "pca")).count() == len(expected)
    redone = manifest["incremental"]["featurized_now"]
    assert redone == total - done_before_rerun, "the rerun redid committed work, or reused uncommitted work"
    assert redone <= (0.3 * total if kill_at == "80% featurized" else 0)


def s3_job_args(bucket: str, run_id: str, image_size: int = 64) -> list[str]:
    return job_args(
        f"s3a://{bucket}/images/",
        f"s3a://{bucket}/runs/",
        run_id,
        weights="none",
        image_size=image_size,
        files_per_partition=64,
        pca_k=4,
    )


def uploaded_classes(s3, bucket, sample_dir, classes) -> list[str]:
    keys = []
    for name in classes:
        for path in sorted((sample_dir / name).glob("*.jpg")):
            key = f"images/{name}/{path.name}"
            s3.upload_file(str(path), bucket, key)
            keys.append(key)
    return keys


def featurized_paths(spark, bucket: str, run_id: str) -> list[str]:
    features = spark.read.parquet(f"s3a://{bucket}/runs/{run_id}/features")
    return sorted(row.path for row in features.select("path").collect())


def test_s3_throttling_and_dropped_connections_lose_nothing(spark, s3, bucket, moto_endpoint, sample_dir):
    keys = uploaded_classes(s3, bucket, sample_dir, ("Kiwi", "Limes"))
    with faulty_s3(moto_endpoint, fault_rate=0.1) as (endpoint, proxy):
        result = run_job(s3_job_args(bucket, "throttled"), endpoint=endpoint)
    assert result.returncode == 0
    faults = Counter({(outcome, method): n for (outcome, method), n in proxy.counts.items() if outcome != "forward"})
    assert {method for _, method in faults} >= {"GET", "PUT"}, f"faults hit too few request kinds: {faults}"
    assert sum(n for (outcome, _), n in faults.items() if outcome == "slowdown") >= 10, faults
    assert sum(n for (outcome, _), n in faults.items() if outcome == "drop") >= 10, faults

    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/throttled/manifest.json")["Body"].read())
    assert (manifest["counts"]["inputs"], manifest["counts"]["featurized"], manifest["counts"]["errors"]) == (
        len(keys),
        len(keys),
        0,
    )
    assert featurized_paths(spark, bucket, "throttled") == sorted(f"s3a://{bucket}/{key}" for key in keys)


def workers_reading_s3(root: psutil.Process, s3_port: int) -> list[psutil.Process]:
    """Python workers forked by pyspark.daemon with a connection to S3 open: inside a featurize task.

    (The warm-up's workers hold the CNN too, but never talk to S3.)
    """
    found = []
    for process in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            parent = process.parent()
            in_daemon = parent and "pyspark.daemon" in " ".join(parent.cmdline())
            if in_daemon and any(c.raddr and c.raddr.port == s3_port for c in process.net_connections(kind="tcp")):
                found.append(process)
    return found


def test_killed_python_worker_is_retried_by_spark(spark, s3, bucket, moto_endpoint, sample_dir, tmp_path):
    """A worker killed from outside (as the OOM killer does) in the featurize stage: Spark reruns its task.

    Reads pay real S3's latency (50 ms) with 2 in flight per task, so that the stage lasts seconds: at
    64 px from moto alone it took about one, and a loaded machine's polling could miss it.
    """
    keys = uploaded_classes(s3, bucket, sample_dir, ("Pear", "Kiwi"))
    log = tmp_path / "driver.log"
    with faulty_s3(moto_endpoint, fault_rate=0.0, latency=0.05) as (endpoint, _), open(log, "w") as stream:
        args = [*s3_job_args(bucket, "worker-killed"), "--fetch-concurrency", "2"]
        job = subprocess.Popen(
            spark_submit_command(args, endpoint, "local[2,4]"),
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=job_environment(),
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        victims: list[psutil.Process] = []
        while not victims:
            assert job.poll() is None, "the job ended before a featurize task was seen"
            assert time.monotonic() < deadline
            victims = workers_reading_s3(psutil.Process(job.pid), urlsplit(endpoint).port)
            time.sleep(0.05)
        victims[0].kill()
        assert job.wait(timeout=600) == 0, log.read_text()[-3000:]
    lost = re.search(r"Lost task (\d+)\.0 in stage (\S+) ", log.read_text())
    assert lost, "the kill did not interrupt a task"
    assert f"Finished task {lost[1]}.1 in stage {lost[2]} " in log.read_text(), "the task was not retried"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/worker-killed/manifest.json")["Body"].read())
    assert (manifest["counts"]["featurized"], manifest["counts"]["errors"]) == (len(keys), 0)
    assert featurized_paths(spark, bucket, "worker-killed") == sorted(f"s3a://{bucket}/{key}" for key in keys)


def test_an_image_that_kills_its_worker_is_one_retryable_error_and_the_run_completes(spark, sample_dir, tmp_path):
    """Spark retries the task; the retry reads its images one at a time and records the one its worker died on."""
    images = tmp_path / "images"
    for name in ("Pear", "Kiwi"):
        (images / name).mkdir(parents=True)
        for path in sorted((sample_dir / name).glob("*.jpg"))[:12]:
            shutil.copy(path, images / name / path.name)
    crasher = images / "Kiwi" / "crasher.jpg"
    crasher.write_bytes(sorted((images / "Kiwi").glob("*.jpg"))[0].read_bytes() + b"CRASH-THE-DECODER")
    out = tmp_path / "out"
    args = job_args(images.as_uri(), out.as_uri(), "crash", weights="none", image_size=32, pca_k=2)

    first = run_job(args, None, env={"FRUITCLOUD_TEST_CRASH_MARKER": "CRASH-THE-DECODER"}, capture=True)
    first_manifest = json.loads((out / "crash" / "manifest.json").read_text())
    errors = spark.read.parquet(str(out / "crash" / "errors")).collect()
    rerun = run_job(args, None, capture=True)
    rerun_manifest = json.loads((out / "crash" / "manifest.json").read_text())

    assert first.returncode == 3, first.stdout[-3000:]
    assert len(re.findall(r"Lost task \S+ in stage", first.stdout)) == 2, "the first attempt and the isolating retry"
    c = first_manifest["counts"]
    assert (c["inputs"], c["featurized"], c["errors_permanent"], c["errors_retryable"]) == (25, 24, 0, 1)
    [error] = errors
    assert (error.path, error.code, error.retryable) == (f"file:{crasher}", "WorkerDied", True)
    assert "re-encode it" in first_manifest["errors_by_code"]["WorkerDied"]["hint"]
    assert not (out / "crash" / "_attempts").exists() or not any((out / "crash" / "_attempts").rglob("*.json"))
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert (rerun_manifest["counts"]["featurized"], rerun_manifest["incremental"]["featurized_now"]) == (25, 1)
