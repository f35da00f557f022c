"""The report page: what it says of errors, their hints, class separation and cost, read from the manifest."""

from __future__ import annotations

from featurize.report import render_html


def manifest(**extra) -> dict:
    return {
        "run_id": "r1",
        "input": "s3a://b/images/",
        "output": "s3a://b/runs/r1",
        "counts": {"inputs": 30, "featurized": 28, "errors": 2, "ignored_non_images": 0, "classes": 2},
        "pca": {"k": 3, "explained_variance_at_k": 0.9},
        "timing": {"wall_seconds": 12.0, "images_per_second": 2.5},
        "parameters": {"weights": "imagenet"},
        "versions": {},
        **extra,
    }


def test_errors_s3_answered_are_listed_with_their_hint_and_whether_a_rerun_retries_them():
    codes = {
        "AccessDenied": {"images": 1, "retryable": True, "hint": "check the host policy's images prefix"},
        "InvalidObjectState": {"images": 1, "retryable": True, "hint": "restore the object from Glacier"},
    }
    page = render_html(manifest(errors_by_code=codes), {}, {"AccessDenied on GetObject": 1, "archived": 1})
    assert "<td>AccessDenied</td><td>1</td><td>yes</td><td>check the host policy&#x27;s images prefix</td>" in page
    assert "<td>InvalidObjectState</td><td>1</td><td>yes</td><td>restore the object from Glacier</td>" in page
    assert '<a href="../manifest.json">manifest.json</a>' in page


def test_separation_is_shown_beside_the_weights_and_a_skipped_probe_says_why():
    probe = {
        "method": "nearest centroid, 20% of each class held out",
        "sample_images": 30,
        "held_out_images": 6,
        "classes": 2,
        "chance": 0.5,
        "accuracy_full": 0.8333,
        "accuracy_pca": 0.6667,
        "dimensions_full": 1280,
        "dimensions_pca": 3,
    }
    shown = manifest()
    shown["pca"]["class_separation"] = probe
    page = render_html(shown, {}, {})
    assert "<tr><td>full features</td><td>1280</td><td>83.3 %</td></tr>" in page
    assert "<tr><td>PCA, k = 3</td><td>3</td><td>66.7 %</td></tr>" in page
    assert "features of the weights <code>imagenet</code>" in page
    skipped = manifest()
    skipped["pca"]["class_separation"] = {"skipped": "needs at least 2 classes, the sample has 1"}
    assert "Not measured: needs at least 2 classes, the sample has 1." in render_html(skipped, {}, {})
    assert "<h3>Errors S3 answered" not in page, "no table of codes when S3 refused nothing"
