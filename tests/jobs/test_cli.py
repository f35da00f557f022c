import pytest
from featurize.cli import parse_args
from featurize.errors import WeightsNotFoundError
from featurize.model import check_weights, imagenet_weights_path


def test_defaults():
    args = parse_args(["--input", "s3a://b/in/", "--output", "s3a://b/out/"])
    assert (args.weights, args.image_size, args.cnn_batch_size, args.pca_variance, args.pca_k) == (
        "imagenet",
        224,
        2,
        0.95,
        None,
    )
    assert parse_args(["--input", "x", "--output", "y", "--runtime", "keras"]).cnn_batch_size == 4
    assert args.run_id.endswith("Z") and len(args.run_id) == 16


def test_explicit_k_replaces_the_variance_target():
    args = parse_args(["--input", "x", "--output", "y", "--pca-k", "50"])
    assert (args.pca_k, args.pca_variance) == (50, None)


@pytest.mark.parametrize(
    "extra",
    [
        ["--pca-variance", "1.5"],
        ["--pca-variance", "0"],
        ["--pca-k", "0"],
        ["--pca-k", "2000"],
        ["--image-size", "8"],
        ["--batch-size", "0"],
        ["--pca-k", "5", "--pca-variance", "0.9"],
        ["--run-id", "a/b"],
        ["--image-size", "1024"],
        ["--max-image-pixels", "500000000"],
        ["--max-decode-mb", "4096"],
        ["--fetch-concurrency", "1000"],
    ],
)
def test_bad_values_exit_with_usage_error(extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--input", "x", "--output", "y", *extra])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_missing_imagenet_weights_say_how_to_provision(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="model_weights role"):
        check_weights("imagenet", 224)
    expected = tmp_path / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert imagenet_weights_path(224) == expected
    assert imagenet_weights_path(100).name.endswith("_224_no_top.h5")
    assert imagenet_weights_path(160).name.endswith("_160_no_top.h5")
    expected.parent.mkdir()
    expected.write_bytes(b"h5")
    check_weights("imagenet", 224)


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="weights file not found"):
        check_weights(str(tmp_path / "nope.h5"), 224)


def test_a_batch_that_cannot_fit_a_4gb_host_is_refused_with_the_largest_that_fits(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--input", "x", "--output", "y", "--batch-size", "256"])
    assert "a 4 GB host holds at most 128 at this size" in capsys.readouterr().err
    assert parse_args(["--input", "x", "--output", "y", "--batch-size", "256", "--image-size", "128"]).batch_size == 256
