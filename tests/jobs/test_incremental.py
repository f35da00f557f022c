"""Reruns over the same output featurize only new or changed images and refit PCA on the union."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from harness.launcher import job_args, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def run(images, out, run_id="inc", **options) -> dict:
    options = {"weights": "none", "image_size": 64, "pca_k": 3, "commit_every": 16} | options
    assert run_job(job_args(images.as_uri(), out.as_uri(), run_id, **options), None).returncode == 0
    return json.loads((out / run_id / "manifest.json").read_text())


def part_files(out, run_id="inc") -> dict[str, int]:
    return {f.name: f.stat().st_mtime_ns for f in sorted((out / run_id / "features").iterdir())}


def features_by_path(spark, out, run_id) -> dict[str, np.ndarray]:
    rows = spark.read.parquet(str(out / run_id / "features")).select("path", "features").collect()
    paths = [row.path for row in rows]
    assert len(paths) == len(set(paths)), "an image appears twice"
    return {row.path: np.array(row.features) for row in rows}


def test_reruns_do_only_what_changed_and_match_a_fresh_run(spark, sample_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    for label in ("Kiwi", "Pear"):
        (images / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:20]:
            shutil.copy2(path, images / label / path.name)
    (images / "Kiwi" / "empty.jpg").write_bytes(b"")
    (images / "Pear" / "broken.jpg").write_bytes(b"not an image")

    first = run(images, out)
    assert (first["incremental"]["featurized_now"], first["incremental"]["reused_images"]) == (42, 0)
    assert (first["counts"]["featurized"], first["counts"]["errors"]) == (40, 2)

    (images / "Lemon").mkdir()
    lemon = sorted((sample_dir / "Lemon").glob("*.jpg"))
    odd_names = ["new[1].jpg", "a {b} *c?.jpg", "-dash 100% #1 +.jpg", "p\u00eache.jpg", "pe\u0302che.jpg"]
    for path, name in zip(lemon, odd_names, strict=False):
        shutil.copy2(path, images / "Lemon" / name)
    before = part_files(out)
    added = run(images, out)
    assert (added["incremental"]["featurized_now"], added["incremental"]["reused_images"]) == (5, 42)
    assert (added["counts"]["inputs"], added["counts"]["featurized"], added["counts"]["classes"]) == (47, 45, 3)
    assert {name: part_files(out)[name] for name in before} == before, "done work was rewritten"

    assert run(images, out) == added, "a rerun with nothing new changes nothing"

    kiwis = sorted((images / "Kiwi").glob("*_100.jpg"))
    changed, removed = kiwis[0], kiwis[1]
    shutil.copyfile(sorted((sample_dir / "Mango").glob("*.jpg"))[0], changed)
    removed.unlink()
    last = run(images, out)
    assert last["incremental"]["featurized_now"] == 1
    assert last["incremental"]["rewritten_commits"] >= 1
    assert (last["counts"]["inputs"], last["counts"]["featurized"], last["counts"]["errors"]) == (46, 44, 2)

    refit = run(images, out, pca_k=5)
    assert (refit["incremental"]["featurized_now"], refit["pca"]["k"]) == (0, 5), "new PCA options refit only"

    fresh = run(images, out, run_id="fresh", pca_k=5)
    incremental, scratch = features_by_path(spark, out, "inc"), features_by_path(spark, out, "fresh")
    assert sorted(incremental) == sorted(scratch)
    assert f"file:{removed}" not in incremental
    for path, vector in scratch.items():
        np.testing.assert_allclose(incremental[path], vector, rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(refit["pca"]["explained_variance"], fresh["pca"]["explained_variance"], rtol=1e-4)
    errors = spark.read.parquet(str(out / "inc" / "errors")).select("path", "stage").collect()
    assert sorted((row.path.rsplit("/", 1)[-1], row.stage) for row in errors) == [
        ("broken.jpg", "decode"),
        ("empty.jpg", "read"),
    ]

    # Other feature settings: a new fingerprint, every image recomputed, the old model's chunks dropped.
    resized = run(images, out, pca_k=5, image_size=96)
    assert resized["incremental"]["fingerprint"] != refit["incremental"]["fingerprint"]
    dropped = resized["incremental"]["dropped_commits"]
    assert (resized["incremental"]["featurized_now"], dropped) == (46, refit["incremental"]["commits"])

    # features/ deleted: the rerun redoes those chunks under the same names, and its cleanup keeps them.
    shutil.rmtree(out / "inc" / "features")
    redone = run(images, out, pca_k=5, image_size=96)
    records = sorted(path.name for path in (out / "inc" / "_commits").glob("*.json"))
    assert redone["counts"] == resized["counts"]
    assert redone["incremental"]["featurized_now"] >= resized["counts"]["featurized"]
    assert records == sorted(name.rsplit("/", 1)[-1] for name in redone["outputs"]["commits"])
    assert run(images, out, pca_k=5, image_size=96) == redone, "a run with nothing to do changes nothing"
