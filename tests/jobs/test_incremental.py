"""Reruns over the same output featurize only new or changed images and refit PCA on the union."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from localrun import job_args, run_job

pytestmark = [pytest.mark.e2e, pytest.mark.spark]


def run(images, out, run_id="inc") -> dict:
    assert (
        run_job(
            job_args(images.as_uri(), out.as_uri(), run_id, weights="none", image_size=64, pca_k=3), None
        ).returncode
        == 0
    )
    return json.loads((out / run_id / "manifest.json").read_text())


def batch_files(out, run_id="inc") -> dict[str, set[tuple[str, int]]]:
    root = out / run_id / "features"
    return {batch.name: {(f.name, f.stat().st_mtime_ns) for f in batch.iterdir()} for batch in sorted(root.iterdir())}


def features_by_path(spark, out, run_id) -> dict[str, np.ndarray]:
    rows = spark.read.parquet(str(out / run_id / "features")).select("path", "features").collect()
    paths = [row.path for row in rows]
    assert len(paths) == len(set(paths)), "an image appears twice"
    return {row.path: row.features.toArray() for row in rows}


def test_reruns_do_only_new_and_changed_images_and_match_a_fresh_run(spark, sample_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "out"
    for label in ("Kiwi", "Pear"):
        (images / label).mkdir(parents=True)
        for path in sorted((sample_dir / label).glob("*.jpg"))[:20]:
            shutil.copy2(path, images / label / path.name)
    (images / "Kiwi" / "empty.jpg").write_bytes(b"")
    (images / "Pear" / "broken.jpg").write_bytes(b"not an image")

    first = run(images, out)
    assert first["incremental"]["featurized_now"] == 42
    assert (first["counts"]["featurized"], first["counts"]["errors"]) == (40, 2)
    [first_batch] = first["incremental"]["batches"]

    (images / "Lemon").mkdir()
    for path in sorted((sample_dir / "Lemon").glob("*.jpg"))[:5]:
        shutil.copy2(path, images / "Lemon" / path.name)
    before = batch_files(out)
    added = run(images, out)
    assert (added["incremental"]["featurized_now"], added["incremental"]["reused_images"]) == (5, 42)
    assert (added["counts"]["inputs"], added["counts"]["featurized"], added["counts"]["classes"]) == (47, 45, 3)
    assert added["incremental"]["batches"][0] == first_batch
    assert batch_files(out)[f"batch={first_batch}"] == before[f"batch={first_batch}"], "done work was rewritten"

    assert run(images, out) == added, "a rerun with nothing new changes nothing"

    kiwis = sorted((images / "Kiwi").glob("*_100.jpg"))
    changed, removed = kiwis[0], kiwis[1]
    shutil.copyfile(sorted((sample_dir / "Mango").glob("*.jpg"))[0], changed)
    os.utime(changed, (1_700_000_000, 1_700_000_000))
    removed.unlink()
    last = run(images, out)
    assert (last["incremental"]["featurized_now"], last["incremental"]["dropped_stale_rows"]) == (1, 1)
    assert (last["counts"]["inputs"], last["counts"]["featurized"], last["counts"]["errors"]) == (46, 44, 2)
    assert sorted(p.name for p in (out / "inc" / "features").iterdir()) == [
        f"batch={b}" for b in last["incremental"]["batches"]
    ], "no stale or uncommitted batch left behind"

    fresh = run(images, out, run_id="fresh")
    incremental, scratch = features_by_path(spark, out, "inc"), features_by_path(spark, out, "fresh")
    assert sorted(incremental) == sorted(scratch)
    assert f"file:{removed}" not in incremental
    for path, vector in scratch.items():
        np.testing.assert_allclose(incremental[path], vector, rtol=1e-4, atol=1e-5, err_msg=path)
    np.testing.assert_allclose(last["pca"]["explained_variance"], fresh["pca"]["explained_variance"], rtol=1e-4)
    errors = spark.read.parquet(str(out / "inc" / "errors")).select("path", "stage").collect()
    assert sorted((row.path.rsplit("/", 1)[-1], row.stage) for row in errors) == [
        ("broken.jpg", "decode"),
        ("empty.jpg", "read"),
    ]
