import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from featurize import pipeline
from featurize.batch import FeaturizeSettings
from featurize.commits import read_commits
from featurize.fetch import FetchSettings
from featurize.storage import Storage
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import types as T

pytestmark = pytest.mark.spark


def vector_frame(spark, rows):
    schema = T.StructType(
        [
            T.StructField("path", T.StringType()),
            T.StructField("label", T.StringType()),
            T.StructField("features", VectorUDT()),
        ]
    )
    return spark.createDataFrame([(f"p{i}", "x", Vectors.dense(row)) for i, row in enumerate(rows)], schema)


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("s3a://b/images/Kiwi/1.jpg", "s3a://b/images", "Kiwi"),
        ("s3a://b/images/loose.jpg", "s3a://b/images", None),
        ("s3a://b/images/Fruit/Pêche blanche/été 1.jpg", "s3a://b/images", "Pêche blanche"),
        ("file:/data/x/A/a [1].png", "file:/data/x", "A"),
    ],
)
def test_label_is_the_parent_folder_and_none_at_the_root(path, root, expected):
    assert pipeline.label_of(path, root) == expected


@pytest.mark.parametrize(
    ("spectrum", "target", "expected"),
    [([0.5, 0.3, 0.15, 0.05], 0.95, 3), ([0.5, 0.3, 0.15, 0.05], 0.5, 1), ([0.9, 0.1], 1.0, 2)],
)
def test_choose_k_is_the_smallest_k_reaching_the_target(spectrum, target, expected):
    assert pipeline.choose_k(spectrum, target) == expected


def numpy_pca(data: np.ndarray):
    centered = data - data.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centered, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    return eigenvalues[order] / eigenvalues.sum(), eigenvectors[:, order]


def test_pca_and_its_projection_match_numpy(spark, tmp_path):
    rng = np.random.default_rng(7)
    latent = rng.normal(size=(300, 3)) * [5.0, 2.0, 1.0]
    data = latent @ rng.normal(size=(3, 12)) + rng.normal(scale=0.05, size=(300, 12))
    df = vector_frame(spark, data)

    result = pipeline.fit_pca(df, target_variance=0.95)
    expected_ratio, expected_vectors = numpy_pca(data)
    assert result.k == pipeline.choose_k(expected_ratio, 0.95)
    np.testing.assert_allclose(result.explained_variance, expected_ratio, atol=1e-6)

    parts = pipeline.write_projection(spark, df, result, uri=f"file:{tmp_path}/pca", name="t", endpoint_url=None)
    rows = sorted(
        (row for part in parts for row in pq.read_table(part.removeprefix("file:")).to_pylist()),
        key=lambda row: int(row["path"][1:]),
    )
    projected = np.array([row["pca"] for row in rows])
    expected_projection = data @ expected_vectors[:, : result.k]  # Spark projects without centring
    assert projected.shape == (300, result.k)
    np.testing.assert_allclose(np.abs(projected), np.abs(expected_projection), rtol=1e-4, atol=1e-4)
    # The saved model holds the k components only, and projects as the job's own projection does.
    stage = result.model
    assert (stage.pc.numRows, stage.pc.numCols, stage.getK()) == (12, result.k, result.k)
    by_model = {row.path: row.pca.toArray() for row in result.model.transform(df).select("path", "pca").collect()}
    np.testing.assert_allclose(np.array([by_model[row["path"]] for row in rows]), projected, rtol=1e-4, atol=1e-4)


def test_explicit_k_keeps_exactly_k_components(spark):
    rng = np.random.default_rng(1)
    df = vector_frame(spark, rng.normal(size=(50, 6)))
    result = pipeline.fit_pca(df, k=4)
    assert (result.k, len(result.explained_variance), result.components.shape) == (4, 4, (6, 4))


def test_featurize_stage_commits_chunks_that_read_back_as_features(spark, sample_dir, tmp_path):
    images = tmp_path / "images" / "Lemon"
    images.mkdir(parents=True)
    for path in sorted((sample_dir / "Lemon").glob("*.jpg"))[:5]:
        (images / path.name).write_bytes(path.read_bytes())
    (images / "broken [1].jpg").write_bytes(b"not an image")
    storage = Storage()
    listed = storage.list_files(str(tmp_path / "images"))
    run_uri = f"file:{tmp_path}/run"
    settings = FeaturizeSettings(weights="none", image_size=32, batch_size=2)
    task = pipeline.make_featurize_task(
        settings, FetchSettings(max_in_flight=3), pipeline.ChunkSettings(run_uri, "fp", commit_every=4)
    )
    # Not UTC, as on a laptop: a listing's times must not move with the session's time zone.
    spark.conf.set("spark.sql.session.timeZone", "America/Sao_Paulo")
    try:
        committed = pipeline.featurize(spark, listed, root=f"file:{tmp_path}/images", tasks=2, featurize_task=task)
    finally:
        spark.conf.unset("spark.sql.session.timeZone")

    assert sum(row.featurized for row in committed) == 5 and sum(row.errors for row in committed) == 1
    commits = read_commits(storage, run_uri)
    assert sorted(c.uri for c in commits) == sorted(row.commit for row in committed)
    rows = sorted(path for commit in commits for path, _, _ in commit.rows)
    assert rows == sorted(f.path for f in listed), "each image in exactly one commit"
    features = pipeline.read_features(spark, commits, None).collect()
    assert sorted(row.path for row in features) == sorted(f.path for f in listed if "broken" not in f.path)
    assert {row.label for row in features} == {"Lemon"} and {row.features.size for row in features} == {1280}
    modified = {f.path: f.modified for f in listed}
    written = [
        row
        for commit in commits
        for part in (commit.features, commit.errors)
        if part
        for row in pq.read_table(io.BytesIO(storage.read_bytes(part))).to_pylist()
    ]
    assert len(written) == 6 and all(row["modified"] == modified[row["path"]] for row in written)
    [errors] = [commit.errors for commit in commits if commit.errors]
    [error] = pq.read_table(io.BytesIO(storage.read_bytes(errors))).to_pylist()
    assert (error["stage"], error["reason"], error["label"]) == ("decode", "not a recognised image format", "Lemon")


def test_tasks_fill_whole_waves_of_slots(spark):
    slots = spark.sparkContext.defaultParallelism
    assert pipeline.task_count(spark, 3976, files_per_partition=1024) == 4 == 2 * slots
    assert pipeline.task_count(spark, 3976, files_per_partition=100) == 40
    assert pipeline.task_count(spark, 1, files_per_partition=100) == 1
    assert pipeline.task_count(spark, 0, files_per_partition=100) == 0


def test_spark_ml_runs_on_native_blas_and_lapack(spark):
    """libopenblas0-pthread (installed by roles/spark and .ci/run): PCA is 2.5x slower on the Java fallback."""
    jvm = spark.sparkContext._jvm
    assert jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName() == "dev.ludovic.netlib.blas.JNIBLAS"
    lapack = jvm.dev.ludovic.netlib.lapack.LAPACK.getInstance().getClass().getName()
    assert lapack == "dev.ludovic.netlib.lapack.JNILAPACK"
