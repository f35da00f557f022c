"""A failure is not a verdict: reads S3 refuses are retried by the next run, and no object stops a run.

Run as on a host: moto enforces IAM and the job holds only the instance
profile's policy (rendered from the aws_infra template), plus, for the denied
case, an explicit Deny on one class folder, as a policy typo or IAM still
propagating after provisioning would give.
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest

from harness.launcher import job_args, run_job
from harness.moto import host_policy, iam_enforced

pytestmark = [pytest.mark.spark, pytest.mark.moto, pytest.mark.slow]

CLASSES = ("Kiwi", "Limes", "Pear")
PER_CLASS = 20
EXIT_RETRY = 3


def upload(s3, bucket, sample_dir, classes=CLASSES, per_class=PER_CLASS, **extra) -> list[str]:
    keys = []
    for name in classes:
        for path in sorted((sample_dir / name).glob("*.jpg"))[:per_class]:
            key = f"images/{name}/{path.name}"
            s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes(), **extra)
            keys.append(key)
    return keys


def run(bucket, endpoint, run_id, credentials):
    arguments = job_args(
        f"s3a://{bucket}/images/", f"s3a://{bucket}/runs/", run_id, weights="none", image_size=32, pca_k=2
    )
    return run_job(arguments, endpoint=endpoint, env=credentials, capture=True)


def manifest(s3, bucket, run_id) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"runs/{run_id}/manifest.json")["Body"].read())


def error_rows(s3, bucket, run_id) -> list[dict]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"runs/{run_id}/errors/").get("Contents", [])
    return [
        row
        for item in listed
        for row in pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())).to_pylist()
    ]


def counts(document: dict) -> tuple[int, int, int, int]:
    c = document["counts"]
    return c["inputs"], c["featurized"], c["errors_permanent"], c["errors_retryable"]


def test_reads_denied_by_iam_are_errors_that_the_rerun_retries(s3, bucket, moto_endpoint, sample_dir):
    upload(s3, bucket, sample_dir)
    denied = host_policy(bucket)
    denied["Statement"].append(
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/images/Pear/*"}
    )
    with iam_enforced(moto_endpoint, denied, bucket) as credentials:
        first = run(bucket, moto_endpoint, "denied", credentials)
    first_manifest = manifest(s3, bucket, "denied")
    with iam_enforced(moto_endpoint, host_policy(bucket), bucket) as credentials:
        second = run(bucket, moto_endpoint, "denied", credentials)
    second_manifest = manifest(s3, bucket, "denied")

    assert first.returncode == EXIT_RETRY, first.stdout[-3000:]
    assert "20 images could not be read this time (AccessDenied x20); rerun with --run-id denied" in first.stdout
    assert counts(first_manifest) == (60, 40, 0, 20)
    assert first_manifest["status"] == "complete_but_retryable_errors"
    assert first_manifest["errors_by_code"]["AccessDenied"]["images"] == 20
    assert "instance profile" in first_manifest["errors_by_code"]["AccessDenied"]["hint"]
    assert second.returncode == 0, second.stdout[-3000:]
    assert counts(second_manifest) == (60, 60, 0, 0)
    incremental = second_manifest["incremental"]
    assert (incremental["featurized_now"], incremental["reused_images"]) == (20, 40)


def test_an_archived_object_is_one_error_row_and_is_featurized_once_restored(s3, bucket, moto_endpoint, sample_dir):
    keys = upload(s3, bucket, sample_dir, classes=CLASSES[:2], per_class=10)
    archived = keys[3]
    content = s3.get_object(Bucket=bucket, Key=archived)["Body"].read()
    s3.put_object(Bucket=bucket, Key=archived, Body=content, StorageClass="GLACIER")
    # A console's folder marker (no content) is no input; content under a folder key is a permanent error row.
    s3.put_object(Bucket=bucket, Key="images/Kiwi/", Body=b"")
    s3.put_object(Bucket=bucket, Key="images/Kiwi/misnamed.jpg/", Body=content)
    with iam_enforced(moto_endpoint, host_policy(bucket), bucket) as credentials:
        first = run(bucket, moto_endpoint, "archived", credentials)
    first_manifest, first_errors = manifest(s3, bucket, "archived"), error_rows(s3, bucket, "archived")
    # The object rewritten as STANDARD by the bucket's owner (not by the host, which may not write images/).
    s3.put_object(Bucket=bucket, Key=archived, Body=content, StorageClass="STANDARD")
    with iam_enforced(moto_endpoint, host_policy(bucket), bucket) as credentials:
        second = run(bucket, moto_endpoint, "archived", credentials)
    second_manifest = manifest(s3, bucket, "archived")

    assert first.returncode == EXIT_RETRY, first.stdout[-3000:]
    assert counts(first_manifest) == (21, 19, 1, 1)
    assert first_manifest["errors_by_code"]["InvalidObjectState"]["images"] == 1
    assert "restore" in first.stdout
    [misnamed] = [r for r in first_errors if r["path"].endswith("/")]
    assert (misnamed["path"], misnamed["retryable"]) == (f"s3a://{bucket}/images/Kiwi/misnamed.jpg/", False)
    assert misnamed["reason"] == f"{len(content)} bytes stored under a folder key (ends with /): rename the object"
    assert second.returncode == 0, second.stdout[-3000:]
    assert counts(second_manifest) == (21, 20, 1, 0)
    assert second_manifest["incremental"]["featurized_now"] == 1


def test_output_inside_the_input_is_refused_before_any_work(s3, bucket, moto_endpoint, sample_dir):
    upload(s3, bucket, sample_dir, classes=CLASSES[:1], per_class=5)
    arguments = job_args(f"s3a://{bucket}/images/", f"s3a://{bucket}/images/runs/", "inside", weights="none")

    result = run_job(arguments, endpoint=moto_endpoint, capture=True)

    assert result.returncode == 1
    assert f"--output s3a://{bucket}/images/runs/ and --input s3a://{bucket}/images/ overlap" in result.stdout
    assert "runs/" not in {obj["Key"][len("images/") :][:5] for obj in s3.list_objects_v2(Bucket=bucket)["Contents"]}


@pytest.mark.parametrize(
    ("statement", "action", "message"),
    [
        ("WriteRunsOnly", "s3:PutObject", "is not writable: AccessDenied on s3:PutObject of s3a://"),
        ("ListTheBucket", "s3:ListBucket", "HeadBucket needs s3:ListBucket on it"),
    ],
)
def test_a_host_policy_missing_one_action_fails_early_naming_it(
    s3, bucket, moto_endpoint, sample_dir, statement, action, message
):
    """The rendered host policy is enough (every other test here runs under it); without one action the run stops."""
    upload(s3, bucket, sample_dir, classes=("Kiwi",), per_class=2)
    policy = host_policy(bucket)
    [granting] = [s for s in policy["Statement"] if s["Sid"] == statement]
    granting["Action"] = [a for a in granting["Action"] if a != action]
    with iam_enforced(moto_endpoint, policy, bucket) as credentials:
        result = run(bucket, moto_endpoint, "short", credentials)
    assert result.returncode == 1, result.stdout[-3000:]
    assert message in result.stdout, result.stdout[-3000:]
    assert "stage list" not in result.stdout
