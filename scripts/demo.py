"""`make demo`: the whole job against a local S3 (moto) with the Fruits-360 sample.

Starts moto on 127.0.0.1, uploads the images, runs the job with spark-submit
over s3a, prints a summary and the output objects, and stops moto even on failure.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import boto3
from localrun import job_args, run_job, sample_images, upload_tree
from motoserver import TEST_CREDENTIALS, moto_server

BUCKET = "fruitcloud-demo"
REPORTS = Path(__file__).resolve().parents[1] / "reports"


def main() -> int:
    images = sample_images()
    os.environ.update(TEST_CREDENTIALS)
    weights = os.environ.get("WEIGHTS", "none")
    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": TEST_CREDENTIALS["AWS_DEFAULT_REGION"]}
        )
        started = time.perf_counter()
        count = upload_tree(s3, images, BUCKET, "images")
        elapsed = time.perf_counter() - started
        print(f"uploaded {count} files from {images} to s3://{BUCKET}/images/ in {elapsed:.1f}s (moto at {endpoint})")

        run_id = "demo"
        job = run_job(
            job_args(
                f"s3a://{BUCKET}/images/",
                f"s3a://{BUCKET}/runs/",
                run_id,
                weights=weights,
                image_size=os.environ.get("IMAGE_SIZE", "224"),
            ),
            endpoint,
        )
        if job.returncode != 0:
            print(f"job failed with exit code {job.returncode}", file=sys.stderr)
            return job.returncode
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/manifest.json")["Body"].read())
        counts, pca, timing = manifest["counts"], manifest["pca"], manifest["timing"]
        print("\n=== fruitcloud demo summary ===")
        ignored = counts["ignored_non_images"]
        print(f"images         {counts['inputs']} ({counts['classes']} classes, {ignored} non-image files ignored)")
        print(f"featurized     {counts['featurized']}   errors {counts['errors']}")
        print(f"PCA            k={pca['k']} components, {100 * pca['explained_variance_at_k']:.1f}% explained variance")
        print(f"throughput     {timing['images_per_second']} images/s, wall {timing['wall_seconds']:.1f}s")
        print(f"stages (s)     {json.dumps(timing['stages_seconds'])}")
        print(f"weights        {weights}")
        print("outputs:")
        for name, uri in manifest["outputs"].items():
            print(f"  {name:<10} {uri}")
        print(f"  manifest   s3a://{BUCKET}/runs/{run_id}/manifest.json")
        print("\noutput objects:")
        for obj in _objects(s3, f"runs/{run_id}/"):
            print(f"  {obj['Size']:>10}  s3://{BUCKET}/{obj['Key']}")
        local = REPORTS / run_id
        local.mkdir(parents=True, exist_ok=True)
        (local / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for obj in _objects(s3, f"runs/{run_id}/report/"):
            (local / "report").mkdir(exist_ok=True)
            s3.download_file(BUCKET, obj["Key"], str(local / "report" / obj["Key"].rsplit("/", 1)[-1]))
        print(f"\nreport: {local / 'report' / 'report.html'} (copied from s3://{BUCKET}/runs/{run_id}/report/)")
    return 0


def _objects(s3, prefix: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        yield from page.get("Contents", [])


if __name__ == "__main__":
    sys.exit(main())
