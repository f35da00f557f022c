"""Every input ends in features or errors, with a readable reason; unusable runs fail in one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from support.fuzz_corpus import write_corpus

from harness.launcher import job_args, job_environment, run_job, spark_submit_command

pytestmark = pytest.mark.spark


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def messy_tree(tmp_path, sample_dir):
    root = tmp_path / "images"
    jpeg = next((sample_dir / "Kiwi").glob("*.jpg")).read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    files = {
        "Kiwi/zero.jpg": b"",
        "Kiwi/truncated.jpg": jpeg[: len(jpeg) // 2],
        "Kiwi/text.jpg": b"this is not an image",
        "Kiwi/alpha.png": encoded(Image.new("RGBA", (30, 30), (0, 255, 0, 128)), "PNG"),
        "Kiwi/gray.jpg": encoded(Image.new("L", (30, 30), 90), "JPEG"),
        "Kiwi/cmyk.jpg": encoded(Image.new("CMYK", (30, 30), (0, 0, 255, 0)), "JPEG"),
        "Kiwi/palette.gif": encoded(Image.new("P", (30, 30), 3), "GIF"),
        "Kiwi/sixteen.png": encoded(Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16)), "PNG"),
        "Kiwi/rotated.jpg": encoded(Image.new("RGB", (40, 20), (200, 10, 10)), "JPEG", exif=exif.tobytes()),
        "Kiwi/huge.png": encoded(Image.new("1", (3000, 3000)), "PNG"),
        "Kiwi/UPPER.JPG": jpeg,
        "Pêche blanche/été 1.jpg": jpeg,
        "loose.jpg": jpeg,
        "Kiwi/notes.txt": b"ignored, not an image extension",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_every_bad_input_is_accounted_for(spark, messy_tree, tmp_path, browser):
    out = tmp_path / "out"
    result = run_job(
        job_args(
            messy_tree.as_uri(),
            out.as_uri(),
            "messy",
            weights="none",
            image_size=32,
            pca_k=2,
            max_image_pixels=4_000_000,
        ),
        endpoint=None,
    )
    assert result.returncode == 0
    manifest = json.loads((out / "messy" / "manifest.json").read_text())
    root = f"file:{messy_tree}"
    features = {r.path[len(root) + 1 :]: r.label for r in spark.read.parquet(str(out / "messy" / "features")).collect()}
    errors = {
        r.path[len(root) + 1 :]: (r.label, r.stage, r.reason)
        for r in spark.read.parquet(str(out / "messy" / "errors")).collect()
    }

    assert features == {
        "Kiwi/alpha.png": "Kiwi",
        "Kiwi/gray.jpg": "Kiwi",
        "Kiwi/cmyk.jpg": "Kiwi",
        "Kiwi/palette.gif": "Kiwi",
        "Kiwi/sixteen.png": "Kiwi",
        "Kiwi/rotated.jpg": "Kiwi",
        "Kiwi/UPPER.JPG": "Kiwi",
        "Pêche blanche/été 1.jpg": "Pêche blanche",
        "loose.jpg": None,
    }
    assert {path: reason[1:] for path, reason in errors.items()} == {
        "Kiwi/zero.jpg": ("read", "empty file (0 bytes)"),
        "Kiwi/text.jpg": ("decode", "not a recognised image format"),
        "Kiwi/truncated.jpg": ("decode", errors["Kiwi/truncated.jpg"][2]),
        "Kiwi/huge.png": (
            "decode",
            "image too large: 3000x3000 = 9000000 pixels, limit is 4000000 (--max-image-pixels)",
        ),
    }
    assert errors["Kiwi/truncated.jpg"][2].startswith("corrupt image data")
    assert manifest["counts"] | {"per_class": None} == {
        "files": 14,
        "ignored_non_images": 1,
        "inputs": 13,
        "featurized": 9,
        "errors": 4,
        "errors_permanent": 4,
        "errors_retryable": 0,
        "classes": 3,
        "per_class": None,
    }

    # The report as its reader sees it, at a laptop's width: every plot loads, at its own size (no
    # shrunken text), no sideways scrolling, the link to the manifest works, the reasons are listed.
    page = browser(out / "messy" / "report" / "report.html")
    assert (page.broken_images, page.broken_links) == ([], [])
    assert len(page.image_widths) == 5
    assert all(shown >= 0.95 * natural for _, shown, natural in page.image_widths), page.image_widths
    assert page.scroll_width <= page.viewport_width
    for reason in ("empty file (0 bytes)", "not a recognised image format", "image too large: 3000x3000"):
        assert reason in page.text
    assert "Not measured: class" in page.text, "3 classes of 1 to 9 images: too few to hold a fifth out"


@pytest.mark.slow
def test_a_fuzz_corpus_completes_with_every_file_accounted_for_once(spark, messy_tree, tmp_path):
    """1,000 malformed JPEG/PNG/GIF/BMP/WebP files beside the messy tree: the run completes, nothing is lost."""
    fuzzed = write_corpus(messy_tree)
    out = tmp_path / "out"
    args = job_args(messy_tree.as_uri(), out.as_uri(), "fuzz", weights="none", image_size=32, pca_k=2)
    assert run_job(args, endpoint=None).returncode == 0
    manifest = json.loads((out / "fuzz" / "manifest.json").read_text())
    features = [r.path for r in spark.read.parquet(str(out / "fuzz" / "features")).select("path").collect()]
    errors = spark.read.parquet(str(out / "fuzz" / "errors")).select("path", "stage", "reason").collect()
    accounted = features + [r.path for r in errors]
    assert len(accounted) == len(set(accounted)) == manifest["counts"]["inputs"] == 13 + len(fuzzed)
    assert {f"file:{p}" for p in fuzzed} <= set(accounted)
    assert {r.stage for r in errors} <= {"read", "decode"}
    assert all(r.reason for r in errors)


def run_failing(args: list[str], endpoint=None, **env) -> subprocess.CompletedProcess:
    """spark-submit the job; its Python driver's log lines arrive on stdout (Spark merges the streams)."""
    return subprocess.run(
        spark_submit_command(args, endpoint),
        capture_output=True,
        text=True,
        check=False,
        env=job_environment(env),
    )


def test_missing_bucket_fails_in_one_line_and_writes_nothing(moto_endpoint, s3):
    result = run_failing(
        ["--input", "s3a://no-such-bucket/images/", "--output", "s3a://no-such-bucket/runs/", "--weights", "none"],
        moto_endpoint,
    )
    assert result.returncode == 1
    assert "failed: bucket does not exist: s3://no-such-bucket" in result.stdout


def test_empty_prefix_fails_without_a_manifest(moto_endpoint, s3, bucket):
    result = run_failing(
        job_args(f"s3a://{bucket}/nothing/", f"s3a://{bucket}/runs/", "empty", weights="none"),
        moto_endpoint,
    )
    assert result.returncode == 1
    assert f"no image files under s3a://{bucket}/nothing/" in result.stdout
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="runs/")


def test_missing_imagenet_weights_fail_on_the_driver_with_the_fix(tmp_path):
    result = run_failing(
        ["--input", tmp_path.as_uri(), "--output", tmp_path.as_uri(), "--weights", "imagenet"],
        KERAS_HOME=str(tmp_path / "keras"),
    )
    assert result.returncode == 2
    assert "ImageNet weights not found" in result.stdout
    assert "model_weights role" in result.stdout


@pytest.mark.slow
def test_credentials_never_reach_logs_or_outputs_even_at_debug(moto_endpoint, s3, bucket, sample_dir):
    secret, token = "FRUITCLOUD-SECRET-KEY-0123456789", "FRUITCLOUD-SESSION-TOKEN-9876543210"
    for path in sorted((sample_dir / "Mango").glob("*.jpg"))[:5]:
        s3.upload_file(str(path), bucket, f"images/Mango/{path.name}")
    args = job_args(f"s3a://{bucket}/images/", f"s3a://{bucket}/runs/", "creds", weights="none", image_size=32, pca_k=2)
    result = run_failing(
        [*args, "--log-level", "DEBUG"],
        moto_endpoint,
        AWS_ACCESS_KEY_ID="AKIAFRUITCLOUDTEST01",
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_SESSION_TOKEN=token,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    everything = result.stdout + result.stderr
    assert " DEBUG " in everything, "the run did log at DEBUG"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/creds/"):
        for obj in page["Contents"]:
            everything += s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read().decode("latin-1")
    for marker in ("AKIAFRUITCLOUDTEST01", secret, token):
        assert marker not in everything


def test_no_credentials_fail_in_one_line_before_spark_reads(moto_endpoint, s3, bucket, tmp_path):
    no_credentials = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    result = subprocess.run(
        spark_submit_command(
            ["--input", f"s3a://{bucket}/images/", "--output", f"s3a://{bucket}/runs/", "--weights", "none"],
            moto_endpoint,
        ),
        capture_output=True,
        text=True,
        check=False,
        env={
            **no_credentials,
            "PYSPARK_PYTHON": sys.executable,
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent"),
            "AWS_CONFIG_FILE": str(tmp_path / "absent"),
            # Nothing answers at the metadata address off EC2; do not wait for it.
            "AWS_EC2_METADATA_DISABLED": "true",
        },
    )
    assert result.returncode == 1
    [failure] = [line for line in result.stdout.splitlines() if " ERROR featurize: " in line]
    assert failure.endswith(
        "no AWS credentials found: on EC2 attach the instance profile, "
        "locally set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_unwritable_output_fails_before_any_compute(tmp_path, sample_dir):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the output folder should be")
    result = run_failing(
        ["--input", (sample_dir / "Kiwi").as_uri(), "--output", (blocker / "runs").as_uri(), "--weights", "none"]
    )
    assert result.returncode == 1
    assert f"output location file:{blocker / 'runs'}/" in result.stdout
    assert "is not writable: Not a directory" in result.stdout
    assert "stage list" not in result.stdout
    assert blocker.read_text() == "a file where the output folder should be"
