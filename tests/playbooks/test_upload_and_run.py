"""upload_images.yml and run_job.yml against moto, with this machine as the Spark host."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from ansible_helpers import REPO, run_playbook
from localrun import JARS_DIR, S3A_JARS, s3a_conf

pytestmark = pytest.mark.e2e


def local_spark_inventory(directory: Path) -> Path:
    path = directory / "local-spark.yml"
    path.write_text(
        "spark:\n  children:\n    spark_master:\n      hosts:\n        local-spark:\n"
        "          ansible_connection: local\n"
        "          ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    )
    return path


def test_upload_is_idempotent_and_run_job_brings_back_the_manifest(s3, bucket, moto_endpoint, sample_dir, tmp_path):
    inventory = local_spark_inventory(tmp_path)
    common = {"fruitcloud_bucket": bucket, "fruitcloud_aws_endpoint_url": moto_endpoint}

    upload = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(sample_dir)})
    assert upload.returncode == 0, upload.output[-3000:]
    assert "3976 files uploaded, 0 unchanged, 24 classes" in upload.output
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    assert sorted(keys) == sorted(f"images/{p.relative_to(sample_dir).as_posix()}" for p in sample_dir.rglob("*.jpg"))

    again = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(sample_dir)})
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap()["changed"] == 0
    assert "0 files uploaded, 3976 unchanged" in again.output

    job_vars = {
        **common,
        "job_run_id": "flow",
        "job_weights": "none",
        "job_image_size": 96,
        "job_become": False,
        "job_python_env": str(Path(sys.executable).parent.parent),
        "job_root": str(tmp_path / "job"),
        "job_log_dir": str(tmp_path / "logs"),
        "job_reports_dir": str(tmp_path / "reports"),
        "job_poll_seconds": 3,
        "job_spark_conf": {
            "spark.master": "local[2]",
            "spark.jars": ",".join(str(JARS_DIR / jar) for jar in S3A_JARS),
            "spark.pyspark.python": sys.executable,
            **s3a_conf(moto_endpoint),
        },
    }
    run = run_playbook("run_job.yml", inventory, job_vars)
    assert run.returncode == 0, run.output[-5000:]
    manifest = json.loads((tmp_path / "reports" / "flow" / "manifest.json").read_text())
    assert (manifest["counts"]["inputs"], manifest["counts"]["featurized"], manifest["counts"]["errors"]) == (
        3976,
        3976,
        0,
    )
    assert "images 3976: 3976 featurized, 0 errors, 24 classes" in run.output
    fetched = sorted(p.name for p in (tmp_path / "reports" / "flow" / "report").iterdir())
    assert fetched == sorted(
        [
            "report.html",
            "explained_variance.png",
            "pca_scatter.png",
            "class_counts.png",
            "stage_seconds.png",
            "errors_by_reason.png",
        ]
    )
    assert f"PCA k={manifest['pca']['k']}" in run.output
    assert (tmp_path / "job" / "featurize.zip").is_file()

    failing = run_playbook(
        "run_job.yml", inventory, {**job_vars, "job_run_id": "broken", "job_input": f"s3a://{bucket}/nothing-here/"}
    )
    assert failing.returncode != 0
    assert "spark-submit exited with 1" in failing.output
    assert "no image files under s3a://" in failing.output, "the driver log tail explains the failure"
    assert not (REPO / "reports" / "broken").exists()
