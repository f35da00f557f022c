"""Storage answers S3's partial failures as failures, and lists what a run must account for."""

from __future__ import annotations

import boto3
import pytest
from featurize.errors import StorageError
from featurize.storage import Storage


class PartlyFailingS3:
    def delete_objects(self, Bucket, Delete):
        keys = [item["Key"] for item in Delete["Objects"]]
        return {"Errors": [{"Key": keys[1], "Code": "AccessDenied", "Message": "Access Denied"}]}


def test_delete_objects_errors_in_a_200_answer_are_raised(monkeypatch):
    monkeypatch.setattr(Storage, "s3", property(lambda self: PartlyFailingS3()))

    expected = r"1 of 3 objects could not be deleted in s3://b/, the first k2: AccessDenied"
    with pytest.raises(StorageError, match=expected):
        Storage("http://127.0.0.1:1").delete_many(["s3a://b/k1", "s3a://b/k2", "s3a://b/k3"])


def test_a_local_compare_and_swap_refuses_a_stale_etag(tmp_path):
    storage = Storage()
    uri = f"file:{tmp_path}/lock"
    first = storage.create(uri, b"one")
    second = storage.create(uri, b"two", replacing=first)

    assert storage.create(uri, b"three", replacing=first) is None
    assert storage.read_bytes(uri) == b"two" and storage.etag(uri) == second


def test_a_listing_skips_folder_markers_but_keeps_content_under_a_folder_key(s3, bucket, moto_endpoint):
    for key, body in {"images/Kiwi/": b"", "images/Kiwi/a.jpg": b"a", "images/Kiwi/b.jpg/": b"bb"}.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    listed = Storage(moto_endpoint).list_files(f"s3a://{bucket}/images/")

    assert [(f.path, f.size) for f in listed] == [
        (f"s3a://{bucket}/images/Kiwi/a.jpg", 1),
        (f"s3a://{bucket}/images/Kiwi/b.jpg/", 2),
    ]


def test_the_bucket_check_gives_the_region_the_image_reads_sign_for(bucket, moto_endpoint):
    oregon = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-west-2")
    oregon.create_bucket(Bucket=f"{bucket}-us", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    storage = Storage(moto_endpoint)
    regions = [storage.check_bucket(f"s3a://{name}/images/") for name in (bucket, f"{bucket}-us")]
    assert regions == ["eu-west-1", "us-west-2"]
    assert storage.check_bucket("/tmp/images") is None
