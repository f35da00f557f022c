"""The moto server the tests run lists a versioned bucket as AWS does."""

from __future__ import annotations


def test_a_folder_whose_objects_are_deleted_is_no_common_prefix(s3, bucket):
    model = ["runs/r/pca_model/metadata/part-0", "runs/r/pca_model/stages/0/data/part-0"]
    for key in [*model, "runs/r/kept/a"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key} for key in model]})

    listed = s3.list_objects_v2(Bucket=bucket, Prefix="runs/r/", Delimiter="/")
    assert [p["Prefix"] for p in listed.get("CommonPrefixes", [])] == ["runs/r/kept/"]
    inside = s3.list_objects_v2(Bucket=bucket, Prefix="runs/r/pca_model/", Delimiter="/")
    assert (inside["KeyCount"], inside.get("CommonPrefixes")) == (0, None)
    # The versions are still there: only the listing of current objects changed.
    versions = s3.list_object_versions(Bucket=bucket, Prefix="runs/r/pca_model/")
    assert (len(versions["Versions"]), len(versions["DeleteMarkers"])) == (2, 2)
