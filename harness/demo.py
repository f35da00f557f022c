"""`make demo`: the whole job against a local S3 (moto) with the Fruits-360 sample.

Starts moto on 127.0.0.1, uploads the images, runs the job with spark-submit
(Spark at WARN: one progress line per stage), prints a summary and the output
objects, copies the report to reports/demo/, and stops moto even on failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import boto3

from harness.launcher import calibrated_weights, job_args, read_manifest, run_job, sample_images, upload_tree
from harness.moto import TEST_CREDENTIALS, moto_server

BUCKET = "fruitcloud-demo"
RUN_ID = "demo"
REPORTS = Path(__file__).resolve().parents[1] / "reports"


def objects(s3, prefix: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        yield from page.get("Contents", [])


def print_summary(manifest: dict, weights: str) -> None:
    counts, pca, timing = manifest["counts"], manifest["pca"], manifest["timing"]
    print("\n=== fruitcloud demo summary ===")
    ignored = counts["ignored_non_images"]
    print(f"images         {counts['inputs']} ({counts['classes']} classes, {ignored} non-image files ignored)")
    print(f"featurized     {counts['featurized']}   errors {counts['errors']}")
    print(f"PCA            k={pca['k']} components, {100 * pca['explained_variance_at_k']:.1f}% explained variance")
    print(f"throughput     {timing['images_per_second']} images/s, wall {timing['wall_seconds']:.1f}s")
    print(f"stages (s)     {json.dumps(timing['stages_seconds'])}")
    print(f"weights        {weights}")
    print(f"cost           {manifest['cost']['summary'].removeprefix('cost ')}")


def print_outputs(s3) -> None:
    folders: dict[str, list[int]] = {}
    for obj in objects(s3, f"runs/{RUN_ID}/"):
        folder = obj["Key"].removeprefix(f"runs/{RUN_ID}/").split("/", 1)[0]
        folders.setdefault(folder, []).append(obj["Size"])
    print(f"\noutputs under s3://{BUCKET}/runs/{RUN_ID}/ (objects, bytes):")
    for folder, sizes in sorted(folders.items()):
        print(f"  {folder:<14} {len(sizes):>4} {sum(sizes):>12,}")


def copy_report(s3) -> Path:
    local = REPORTS / RUN_ID
    (local / "report").mkdir(parents=True, exist_ok=True)
    for obj in objects(s3, f"runs/{RUN_ID}/report/"):
        s3.download_file(BUCKET, obj["Key"], str(local / "report" / obj["Key"].rsplit("/", 1)[-1]))
    return local / "report" / "report.html"


def main() -> int:
    images = sample_images()
    os.environ.update(TEST_CREDENTIALS)
    # No ImageNet download here: the calibrated test weights, unless WEIGHTS says otherwise (none, imagenet, PATH).
    weights = os.environ.get("WEIGHTS") or str(calibrated_weights())
    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": TEST_CREDENTIALS["AWS_DEFAULT_REGION"]}
        )
        started = time.perf_counter()
        count = upload_tree(s3, images, BUCKET, "images")
        elapsed = time.perf_counter() - started
        print(f"uploaded {count} files from {images} to s3://{BUCKET}/images/ in {elapsed:.1f}s (moto at {endpoint})")
        options = {"weights": weights, "image_size": os.environ.get("IMAGE_SIZE", "224")}
        arguments = job_args(f"s3a://{BUCKET}/images/", f"s3a://{BUCKET}/runs/", RUN_ID, **options)
        job = run_job(arguments, endpoint, spark_log_level="WARN")
        if job.returncode != 0:
            print(f"job failed with exit code {job.returncode}", file=sys.stderr)
            return job.returncode
        manifest = read_manifest(f"s3a://{BUCKET}/runs/", RUN_ID, s3)
        print_summary(manifest, weights)
        print_outputs(s3)
        report = copy_report(s3)
        (report.parent.parent / "manifest.json").write_text(json.dumps(manifest, indent=2))
        print(f"\nreport: {report} (copied from s3://{BUCKET}/runs/{RUN_ID}/report/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
