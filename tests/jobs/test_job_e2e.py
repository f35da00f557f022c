"""The job end to end with spark-submit, s3a and moto, on the real Fruits-360 sample."""

import json
import socket

import pytest
from featurize.pipeline import choose_k
from pyspark.ml.feature import PCAModel
from pyspark.sql import functions as F

from harness.launcher import run_job, upload_tree

pytestmark = pytest.mark.spark


@pytest.fixture
def uploaded(s3, bucket, sample_dir):
    upload_tree(s3, sample_dir, bucket, "images")
    s3.put_object(Bucket=bucket, Key="images/Kiwi/broken.jpg", Body=b"not really a jpeg")
    expected = {
        f"s3a://{bucket}/images/{p.relative_to(sample_dir).as_posix()}": p.parent.name
        for p in sample_dir.rglob("*.jpg")
    }
    return bucket, expected


def test_job_featurizes_every_image_once_and_pca_agrees_with_manifest(spark, s3, uploaded, moto_endpoint):
    bucket, expected_labels = uploaded
    run_root = f"s3a://{bucket}/runs/e2e"
    args = [
        "--input",
        f"s3a://{bucket}/images/",
        "--output",
        f"s3a://{bucket}/runs/",
        "--run-id",
        "e2e",
        "--weights",
        "none",
        "--image-size",
        "96",
        "--pca-variance",
        "0.9",
    ]
    assert run_job(args, moto_endpoint).returncode == 0

    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/e2e/manifest.json")["Body"].read())
    features = spark.read.parquet(f"{run_root}/features")
    rows = features.select("path", "label", F.size("features").alias("dim")).collect()
    assert {row.path: row.label for row in rows} == expected_labels
    assert len(rows) == len(expected_labels), "each image exactly once"
    assert {row.dim for row in rows} == {1280}

    errors = spark.read.parquet(f"{run_root}/errors").collect()
    assert [(e.path, e.label, e.stage, e.reason) for e in errors] == [
        (f"s3a://{bucket}/images/Kiwi/broken.jpg", "Kiwi", "decode", "not a recognised image format")
    ]
    assert manifest["counts"] | {"per_class": None} == {
        "files": len(expected_labels) + 2,
        "ignored_non_images": 1,
        "inputs": len(expected_labels) + 1,
        "featurized": len(expected_labels),
        "errors": 1,
        "errors_permanent": 1,
        "errors_retryable": 0,
        "classes": 24,
        "per_class": None,
    }

    pca = spark.read.parquet(f"{run_root}/pca")
    k = manifest["pca"]["k"]
    assert pca.count() == len(expected_labels)
    assert {len(row.pca) for row in pca.select("pca").collect()} == {k}
    model = PCAModel.load(f"{run_root}/pca_model")
    spectrum = list(model.explainedVariance)
    assert choose_k(spectrum, 0.9) == k
    assert sum(spectrum[:k]) == pytest.approx(manifest["pca"]["explained_variance_at_k"])
    assert sum(spectrum[:k]) >= 0.9 > sum(spectrum[: k - 1])
    assert set(manifest["timing"]["stages_seconds"]) >= {"list", "plan", "warm_up", "featurize", "verify", "pca_fit"}
    # Where the images were featurized: local mode has one executor host, this one.
    assert manifest["timing"]["featurized_by_host"] == {socket.gethostname(): len(expected_labels)}
    # Both task slots' Python workers got the model while the driver listed; no featurize task built its own.
    assert manifest["timing"]["warm_up"] | {"seconds": None} == {
        "python_workers": 2,
        "seconds": None,
        "models_built_by_featurize_tasks": 0,
    }

    report_keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/e2e/report/")["Contents"]]
    pngs = sorted(key.rsplit("/", 1)[-1] for key in report_keys if key.endswith(".png"))
    assert pngs == [
        "class_counts.png",
        "errors_by_reason.png",
        "explained_variance.png",
        "pca_scatter.png",
        "stage_seconds.png",
    ]
    for name in pngs:
        data = s3.get_object(Bucket=bucket, Key=f"runs/e2e/report/{name}")["Body"].read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000, name
    page = s3.get_object(Bucket=bucket, Key="runs/e2e/report/report.html")["Body"].read().decode()
    assert all(f'src="{name}"' in page for name in pngs)
    assert manifest["outputs"]["report"] == f"{run_root}/report/report.html"

    # The cost counts what the run sent to S3: a GET per image and chunk read back, PUTs for the chunks and outputs.
    estimate = manifest["cost"]
    requests = estimate["parts"]["s3_requests"]
    assert estimate["basis"].startswith("not on EC2: the price of the same run on a t2.medium in ")
    assert estimate["total_usd"] > estimate["parts"]["instance"]["usd"] > 0
    by_operation = estimate["requests_by_operation"]
    assert by_operation["boto3"]["GetObject"] >= len(expected_labels) + 1
    assert requests["get"] >= by_operation["boto3"]["GetObject"] and requests["put"] > len(
        manifest["outputs"]["commits"]
    )
    assert by_operation["s3a"]["object_put_request"] > 0, "Hadoop s3a requests are counted too"
    assert "Cost of this run" in page and f"${estimate['total_usd']:.4f}" in page
    separation = manifest["pca"]["class_separation"]
    assert (separation["classes"], separation["dimensions_pca"]) == (24, k)
    assert 0 <= separation["accuracy_pca"] <= 1 and 0 <= separation["accuracy_full"] <= 1
    assert "Do the classes separate?" in page and f"PCA, k = {k}" in page

    rerun = run_job(args, moto_endpoint)
    assert rerun.returncode == 0
    again = json.loads(s3.get_object(Bucket=bucket, Key="runs/e2e/manifest.json")["Body"].read())
    assert again["finished_at"] == manifest["finished_at"], "a complete run is not redone"
