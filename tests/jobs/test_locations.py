"""Input and output locations that overlap are refused before any work (without Spark)."""

from __future__ import annotations

import pytest
from featurize.errors import LocationsOverlapError
from featurize.locations import check_no_overlap


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
