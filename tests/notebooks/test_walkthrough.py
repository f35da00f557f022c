"""The walkthrough notebook runs top to bottom against moto, so it cannot rot.

It runs as the host runs it: with the credentials of a user whose only policy
is the instance profile's (rendered from the aws_infra template), moto
enforcing IAM, and the settings the Jupyter role puts in the kernel's
environment (bucket, prefixes, weights, image size).
"""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from harness.launcher import REPO, build_job_zip, s3a_conf, s3a_jars, upload_tree
from harness.moto import host_policy, iam_enforced

pytestmark = [pytest.mark.spark, pytest.mark.moto, pytest.mark.slow]


def test_notebook_executes_and_reads_its_outputs_back(s3, bucket, moto_endpoint, sample_dir, monkeypatch):
    upload_tree(s3, sample_dir, bucket, "images")
    conf = {
        "spark.master": "local[2]",
        "spark.ui.enabled": "false",
        "spark.jars": ",".join(str(jar) for jar in s3a_jars()),
        **s3a_conf(moto_endpoint),
    }
    for name, value in {
        "FRUITCLOUD_BUCKET": bucket,
        "FRUITCLOUD_IMAGES_PREFIX": "images/",
        "FRUITCLOUD_RUNS_PREFIX": "runs/",
        "FRUITCLOUD_IMAGE_SIZE": "224",
        "FRUITCLOUD_S3_ENDPOINT": moto_endpoint,
        "FRUITCLOUD_WEIGHTS": "none",
        "FRUITCLOUD_JOB_PATH": str(REPO / "jobs"),
        "FRUITCLOUD_SAMPLE": "80",
        "FRUITCLOUD_JOB_ZIP": str(build_job_zip(REPO / "build" / "featurize-notebook.zip")),
        "FRUITCLOUD_SPARK_CONF": json.dumps(conf),
        "PYSPARK_PYTHON": sys.executable,
    }.items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(REPO / "notebooks" / "fruitcloud_walkthrough.ipynb", as_version=4)
    assert all(
        not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"
    ), "outputs stripped in git"

    with iam_enforced(moto_endpoint, host_policy(bucket), bucket) as host_credentials:
        for name, value in host_credentials.items():
            monkeypatch.setenv(name, value)
        client = NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
        )
        client.execute()

    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "3977 objects, 24 classes" in text
    assert "80 images, 80 featurized in 2 commits" in text
    assert "80 rows read back" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    assert os.environ["FRUITCLOUD_BUCKET"] == bucket
    written = {obj["Key"].split("/")[1] for obj in s3.list_objects_v2(Bucket=bucket, Prefix="runs/")["Contents"]}
    assert written == {"notebook"}, "the notebook writes under the runs prefix only"
