import numpy as np
import pytest
from featurize import pipeline
from featurize.batch import FeaturizeSettings
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors, VectorUDT
from pyspark.sql import functions as F
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
    ("uri", "expected"),
    [
        ("file:///data/images/", "file:/data/images"),
        ("s3a://bucket/images/", "s3a://bucket/images"),
        ("/data/images", "file:/data/images"),
    ],
)
def test_qualified_root_matches_spark_path_spelling(uri, expected):
    assert pipeline.qualified_root(uri) == expected


def test_label_is_the_parent_folder_and_null_at_the_root(spark):
    root = "s3a://b/images"
    paths = [
        f"{root}/Apple Braeburn/r_1_100.jpg",
        f"{root}/Training/Kiwi/1.jpg",
        f"{root}/Pêche/été 1.JPG",
        f"{root}/loose.jpg",
    ]
    df = spark.createDataFrame([(p,) for p in paths], "path string")
    labels = [row.label for row in df.select(pipeline.label_column(F.col("path"), root).alias("label")).collect()]
    assert labels == ["Apple Braeburn", "Kiwi", "Pêche", None]


@pytest.mark.parametrize(
    ("spectrum", "target", "expected"),
    [
        ([0.5, 0.3, 0.15, 0.05], 0.95, 3),
        ([0.5, 0.3, 0.15, 0.05], 0.8, 2),
        ([0.5, 0.3, 0.15, 0.05], 1.0, 4),
        ([1.0], 0.95, 1),
    ],
)
def test_choose_k_is_the_smallest_k_reaching_the_target(spectrum, target, expected):
    assert pipeline.choose_k(spectrum, target) == expected


def numpy_pca(data: np.ndarray):
    centered = data - data.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centered, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    return eigenvalues[order] / eigenvalues.sum(), eigenvectors[:, order]


def test_pca_matches_a_numpy_eigendecomposition(spark):
    rng = np.random.default_rng(7)
    latent = rng.normal(size=(300, 3)) * [5.0, 2.0, 1.0]
    data = latent @ rng.normal(size=(3, 12)) + rng.normal(scale=0.05, size=(300, 12))
    df = vector_frame(spark, data)

    result = pipeline.fit_pca(df, target_variance=0.95)
    expected_ratio, expected_vectors = numpy_pca(data)

    assert result.k == pipeline.choose_k(expected_ratio, 0.95)
    np.testing.assert_allclose(result.explained_variance, expected_ratio, atol=1e-6)
    projected = np.array(
        [row.pca for row in pipeline.project(df, result).select(vector_to_array("pca").alias("pca")).collect()]
    )
    expected_projection = data @ expected_vectors[:, : result.k]  # Spark projects without centering
    assert projected.shape == (300, result.k)
    np.testing.assert_allclose(np.abs(projected), np.abs(expected_projection), rtol=1e-5, atol=1e-6)


def test_explicit_k_keeps_exactly_k_components(spark):
    rng = np.random.default_rng(1)
    df = vector_frame(spark, rng.normal(size=(50, 6)))
    result = pipeline.fit_pca(df, k=4)
    assert result.k == 4
    assert len(result.explained_variance) == 4
    assert {len(row.pca) for row in pipeline.project(df, result).collect()} == {4}


def test_featurize_udf_on_a_small_dataframe(spark, sample_dir):
    good = [p.read_bytes() for p in sorted((sample_dir / "Lemon").glob("*.jpg"))[:2]]
    df = spark.createDataFrame(
        [
            ("a.jpg", "Lemon", 1, None, good[0]),
            ("b.jpg", "Lemon", 1, None, b"not an image"),
            ("c.jpg", "Lemon", 1, None, good[1]),
        ],
        "path string, label string, size_bytes long, modified timestamp, content binary",
    )
    udf = pipeline.make_featurize_udf(FeaturizeSettings(weights="none", image_size=32, batch_size=2))
    rows = {row.path: row for row in pipeline.featurize(df, udf).collect()}

    assert set(rows) == {"a.jpg", "b.jpg", "c.jpg"}
    assert len(rows["a.jpg"].features) == 1280 and rows["a.jpg"].error is None
    assert rows["b.jpg"].features is None
    assert (rows["b.jpg"].error_stage, rows["b.jpg"].error) == ("decode", "not a recognised image format")
    assert rows["a.jpg"].features != rows["c.jpg"].features
    vectors = pipeline.features_of(pipeline.featurize(df, udf)).collect()
    assert sorted(row.path for row in vectors) == ["a.jpg", "c.jpg"]
    assert all(row.features.size == 1280 for row in vectors)


def test_listing_counts_images_and_ignores_other_files(spark, tmp_path, sample_dir):
    for name in ("Kiwi/a.jpg", "Kiwi/B.PNG", "Kiwi/notes.txt", "top.webp", "README.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    stats = pipeline.list_inputs(spark, tmp_path.as_uri())
    assert (stats.files, stats.images, stats.ignored) == (5, 3, 2)
    labels = sorted(
        (row.path.rsplit("/", 1)[-1], row.label) for row in pipeline.load_images(spark, tmp_path.as_uri()).collect()
    )
    assert labels == [("B.PNG", "Kiwi"), ("a.jpg", "Kiwi"), ("top.webp", None)]


def test_partitions_follow_files_per_partition(spark, sample_dir):
    expected = pipeline.plan_partitions(spark, 3976, files_per_partition=100)
    actual = pipeline.load_images(spark, sample_dir.as_uri()).rdd.getNumPartitions()
    assert expected == 40
    assert abs(actual - expected) <= 2


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ("file:///tmp/P%C3%AAche%20blanche/%C3%A9t%C3%A9%201.jpg", "file:/tmp/Pêche blanche/été 1.jpg"),
        ("file:///tmp/Pêche%20blanche/été%201.jpg", "file:/tmp/Pêche blanche/été 1.jpg"),
        ("s3a://bucket/images/Apple%20Red%201/r_1.jpg", "s3a://bucket/images/Apple Red 1/r_1.jpg"),
    ],
)
def test_listed_uris_match_the_path_column(listed, expected):
    assert pipeline.path_as_spark_shows_it(listed) == expected


def test_plan_increment_reuses_unchanged_rows_and_marks_the_rest_stale():
    from datetime import datetime
    from types import SimpleNamespace as Row

    def committed(path, size, modified, batch):
        return Row(path=path, size_bytes=size, modified=modified and datetime.fromtimestamp(modified), batch=batch)

    rows = [
        committed("s3a://b/i/A/same.jpg", 10, 1_000, "b1"),
        committed("s3a://b/i/A/empty.jpg", 0, None, "b1"),
        committed("s3a://b/i/A/resized.jpg", 10, 1_000, "b2"),
        committed("s3a://b/i/A/touched.jpg", 10, 1_000, "b2"),
        committed("s3a://b/i/A/gone.jpg", 10, 1_000, "b3"),
    ]
    versions = {
        "s3a://b/i/A/same.jpg": (10, 1_000),
        "s3a://b/i/A/empty.jpg": (0, 5_000),
        "s3a://b/i/A/resized.jpg": (11, 1_000),
        "s3a://b/i/A/touched.jpg": (10, 2_000),
        "s3a://b/i/B/new.jpg": (10, 1_000),
    }
    plan = pipeline.plan_increment(sorted(versions), versions, rows)
    assert plan.todo == ("s3a://b/i/A/resized.jpg", "s3a://b/i/A/touched.jpg", "s3a://b/i/B/new.jpg")
    assert plan.reused == 2
    assert plan.stale_paths == {"s3a://b/i/A/resized.jpg", "s3a://b/i/A/touched.jpg", "s3a://b/i/A/gone.jpg"}
    assert plan.stale_batches == {"b2", "b3"}
    assert not plan.nothing_to_do
    assert pipeline.plan_increment(["s3a://b/i/A/same.jpg"], versions, rows[:1]).nothing_to_do
