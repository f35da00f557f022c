"""The checks before any work: overlapping locations refused, s3a able to write where pca_model goes."""

from __future__ import annotations

import pytest
from featurize.errors import LocationsOverlapError, StorageError
from featurize.locations import check_no_overlap, check_spark_writes
from featurize.storage import Storage


@pytest.mark.parametrize(
    ("images", "output"),
    [
        ("s3a://b/data/", "s3a://b/data/runs/"),
        ("s3a://b/data", "s3a://b/data/"),
        ("s3a://b/data/images/", "s3a://b/data/"),
        ("file:///srv/images/", "/srv/images/out"),
    ],
)
def test_overlapping_locations_are_refused_naming_both(images, output):
    with pytest.raises(LocationsOverlapError, match=rf"--output {output} and --input {images} overlap"):
        check_no_overlap(images, output)


@pytest.mark.parametrize(
    ("images", "output"),
    [
        ("s3a://b/images/", "s3a://b/runs/"),
        ("s3a://b/data/", "s3a://b/data-runs/"),
        ("s3a://b/data/", "s3a://other/data/runs/"),
        ("file:///srv/images/", "file:///srv/images-out/"),
    ],
)
def test_sibling_locations_are_accepted(images, output):
    check_no_overlap(images, output)


@pytest.mark.spark
def test_the_s3a_probe_leaves_nothing_and_names_what_to_check_when_it_cannot_write(spark, s3, bucket, moto_endpoint):
    check_spark_writes(spark, Storage(moto_endpoint), f"s3a://{bucket}/runs/r")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)

    expected = r"Spark cannot write to s3a://t-no-such-bucket/runs/r through s3a .*s3a jars"
    with pytest.raises(StorageError, match=expected):
        check_spark_writes(spark, Storage(moto_endpoint), "s3a://t-no-such-bucket/runs/r")
