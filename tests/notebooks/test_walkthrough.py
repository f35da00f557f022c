"""The walkthrough notebook runs top to bottom against moto, so it cannot rot."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from harness.launcher import REPO, build_job_zip, s3a_conf, s3a_jars, upload_tree

pytestmark = pytest.mark.e2e


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

    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()

    text = "\n".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "3977 objects, 24 classes" in text
    assert "80 images, 80 featurized in 2 commits" in text
    assert "80 rows read back" in text
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3
    assert os.environ["FRUITCLOUD_BUCKET"] == bucket
