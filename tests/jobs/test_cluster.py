"""The same job on a Spark standalone cluster (a master and two workers on 127.0.0.1) gives the local result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from localrun import run_job
from motoserver import free_port
from pyspark.ml.functions import vector_to_array

pytestmark = [pytest.mark.e2e, pytest.mark.spark]
SPARK_CLASS = Path(sys.executable).with_name("spark-class")


@pytest.fixture
def standalone_cluster(tmp_path):
    port, ui = free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
    }
    processes = [
        subprocess.Popen(
            [
                str(SPARK_CLASS),
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--webui-port",
                str(ui),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    for index in (1, 2):
        work = tmp_path / f"worker{index}"
        work.mkdir()
        processes.append(
            subprocess.Popen(
                [
                    str(SPARK_CLASS),
                    "org.apache.spark.deploy.worker.Worker",
                    "--cores",
                    "1",
                    "--memory",
                    "1500m",
                    "--work-dir",
                    str(work),
                    "--webui-port",
                    str(free_port()),
                    "--host",
                    "127.0.0.1",
                    f"spark://127.0.0.1:{port}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
                    if json.load(response)["aliveworkers"] == 2:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "workers did not register with the master"
            time.sleep(1)
        yield f"spark://127.0.0.1:{port}"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def vectors(spark, uri: str, column: str) -> dict[str, np.ndarray]:
    rows = spark.read.parquet(uri).select("path", vector_to_array(column).alias("v")).collect()
    return {row.path: np.array(row.v) for row in rows}


def test_cluster_run_equals_local_run(spark, s3, bucket, moto_endpoint, sample_dir, standalone_cluster):
    for folder in ("Lemon", "Limes", "Orange"):
        for path in sorted((sample_dir / folder).glob("*.jpg"))[:60]:
            s3.upload_file(str(path), bucket, f"images/{folder}/{path.name}")
    common = [
        "--input",
        f"s3a://{bucket}/images/",
        "--output",
        f"s3a://{bucket}/runs/",
        "--weights",
        "none",
        "--image-size",
        "96",
        "--pca-k",
        "8",
        "--files-per-partition",
        "45",
    ]
    assert run_job([*common, "--run-id", "local"], moto_endpoint).returncode == 0
    assert (
        run_job(
            [*common, "--run-id", "cluster"],
            moto_endpoint,
            master=standalone_cluster,
            extra_conf={"spark.executor.memory": "1g", "spark.pyspark.python": sys.executable},
        ).returncode
        == 0
    )

    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/cluster/manifest.json")["Body"].read())
    assert manifest["parameters"]["spark_master"] == standalone_cluster
    local = vectors(spark, f"s3a://{bucket}/runs/local/features", "features")
    cluster = vectors(spark, f"s3a://{bucket}/runs/cluster/features", "features")
    assert sorted(local) == sorted(cluster) and len(local) == 180
    for path, vector in local.items():
        np.testing.assert_allclose(cluster[path], vector, rtol=1e-4, atol=1e-5)
    local_pca = vectors(spark, f"s3a://{bucket}/runs/local/pca", "pca")
    cluster_pca = vectors(spark, f"s3a://{bucket}/runs/cluster/pca", "pca")
    for path, vector in local_pca.items():
        np.testing.assert_allclose(np.abs(cluster_pca[path]), np.abs(vector), rtol=1e-3, atol=1e-3)
