"""A run killed mid-way and started again converges to each image exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from localrun import run_job, spark_submit_command

pytestmark = [pytest.mark.e2e, pytest.mark.spark]


@pytest.mark.parametrize("kill_at", ["stage featurize_and_write_features: started", "stage pca_fit: started"])
def test_sigkill_then_rerun_converges(spark, sample_dir, tmp_path, kill_at):
    source = sample_dir / "Pear"
    out = tmp_path / "out"
    args = [
        "--input",
        source.parent.as_uri(),
        "--output",
        out.as_uri(),
        "--run-id",
        "killed",
        "--weights",
        "none",
        "--image-size",
        "64",
        "--files-per-partition",
        "64",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as stream:
        first = subprocess.Popen(
            spark_submit_command(args, None),
            stdout=stream,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while kill_at not in log.read_text():
            assert first.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(1.5)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "killed" / "manifest.json").exists(), "a killed run is never marked complete"

    assert run_job(args, endpoint=None).returncode == 0
    manifest = json.loads((out / "killed" / "manifest.json").read_text())
    features = spark.read.parquet(str(out / "killed" / "features"))
    paths = [row.path for row in features.select("path").collect()]
    expected = sorted(f"file:{p}" for p in sample_dir.rglob("*.jpg"))
    assert sorted(paths) == expected, "each image exactly once"
    assert manifest["counts"]["featurized"] == len(expected)
    assert spark.read.parquet(str(out / "killed" / "pca")).count() == len(expected)
