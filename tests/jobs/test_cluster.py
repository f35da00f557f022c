"""The same job on a Spark standalone cluster (a master and two workers on 127.0.0.1) gives the local result."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from harness.launcher import run_job
from harness.moto import free_port

# With the Ansible-built cluster test (tests/playbooks/test_scale_out.py): the second largest
# pytest-xdist group, so xdist starts it at once on the worker the container group leaves free.
pytestmark = [pytest.mark.spark, pytest.mark.slow, pytest.mark.xdist_group("cluster")]
SPARK_CLASS = Path(sys.executable).with_name("spark-class")


SECRET = "0f" * 32


def spark_daemon(kind: str, tmp_path: Path, name: str, *args: str, secret: str | None) -> subprocess.Popen:
    """A standalone master or worker as the spark role configures it: authenticated with ``secret`` (or none),
    its traffic encrypted."""
    properties = tmp_path / f"{name}.conf"
    properties.write_text(
        "spark.authenticate true\nspark.network.crypto.enabled true\n"
        + (f"spark.authenticate.secret {secret}\n" if secret else "")
    )
    env = {
        **os.environ,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(tmp_path / "logs"),
    }
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - the daemon writes it until terminated
    return subprocess.Popen(
        [str(SPARK_CLASS), f"org.apache.spark.deploy.{kind}", "--properties-file", str(properties), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def start_worker(tmp_path: Path, name: str, master: str, secret: str | None) -> subprocess.Popen:
    work = tmp_path / name
    work.mkdir()
    return spark_daemon(
        "worker.Worker",
        tmp_path,
        name,
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
        master,
        secret=secret,
    )


def alive_workers(ui: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2) as response:
            return json.load(response)["aliveworkers"]
    except (OSError, ValueError):  # not listening yet, or an empty answer while the master starts (under load)
        return -1


@pytest.fixture
def authenticated_master(tmp_path):
    """A master that, as the spark role configures it on a cluster, requires the shared secret."""
    port, ui = free_port(), free_port()
    processes = [
        spark_daemon(
            "master.Master",
            tmp_path,
            "master",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--webui-port",
            str(ui),
            secret=SECRET,
        )
    ]
    try:
        yield f"spark://127.0.0.1:{port}", ui, processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)


def wait_for_workers(ui: int, count: int, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while alive_workers(ui) != count:
        assert time.monotonic() < deadline, f"{count} workers did not register with the master"
        time.sleep(1)


@pytest.fixture
def standalone_cluster(tmp_path, authenticated_master):
    master, ui, processes = authenticated_master
    for index in (1, 2):
        processes.append(start_worker(tmp_path, f"worker{index}", master, SECRET))
    wait_for_workers(ui, 2)
    return master


def test_master_refuses_a_worker_without_the_cluster_secret(tmp_path, authenticated_master):
    master, ui, processes = authenticated_master
    wait_for_workers(ui, 0)
    processes.append(start_worker(tmp_path, "stranger", master, secret=None))
    processes.append(start_worker(tmp_path, "wrong", master, secret="aa" * 32))
    time.sleep(20)
    assert alive_workers(ui) == 0, "a worker without the right secret joined the cluster"
    processes.append(start_worker(tmp_path, "member", master, SECRET))
    wait_for_workers(ui, 1)


def vectors(spark, uri: str, column: str) -> dict[str, np.ndarray]:
    rows = spark.read.parquet(uri).select("path", column).collect()
    return {row.path: np.array(row[column]) for row in rows}


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
            extra_conf={
                "spark.executor.memory": "1g",
                "spark.pyspark.python": sys.executable,
                "spark.authenticate": "true",
                "spark.authenticate.secret": SECRET,
                "spark.network.crypto.enabled": "true",
            },
        ).returncode
        == 0
    )

    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/cluster/manifest.json")["Body"].read())
    assert manifest["parameters"]["spark_master"] == standalone_cluster
    # Both workers run on this host here (a multi-host cluster lists each worker's host).
    assert manifest["timing"]["featurized_by_host"] == {socket.gethostname(): 180}
    local = vectors(spark, f"s3a://{bucket}/runs/local/features", "features")
    cluster = vectors(spark, f"s3a://{bucket}/runs/cluster/features", "features")
    assert sorted(local) == sorted(cluster) and len(local) == 180
    for path, vector in local.items():
        np.testing.assert_allclose(cluster[path], vector, rtol=1e-4, atol=1e-5)
    local_pca = vectors(spark, f"s3a://{bucket}/runs/local/pca", "pca")
    cluster_pca = vectors(spark, f"s3a://{bucket}/runs/cluster/pca", "pca")
    for path, vector in local_pca.items():
        np.testing.assert_allclose(np.abs(cluster_pca[path]), np.abs(vector), rtol=1e-3, atol=1e-3)
