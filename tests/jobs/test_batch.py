import io

import numpy as np
from featurize.batch import BatchTimings, FeaturizeSettings, featurize_contents, featurize_fetched
from featurize.errors import PermanentReadError, RetryableReadError
from featurize.fetch import Fetched
from PIL import Image


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 12), color).save(buffer, "PNG")
    return buffer.getvalue()


class FakeModel:
    """Stands in for the CNN: the mean of each channel, repeated to 1280 values."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        channel_means = batch.reshape(len(batch), -1, 3).mean(axis=1)
        return np.tile(channel_means, (1, 1280 // 3 + 1))[:, :1280].astype(np.float32)


def test_good_images_get_features_and_bad_ones_errors_in_input_order():
    contents = [png((10, 20, 30)), b"", b"junk", png((200, 100, 0))]
    model = FakeModel()
    timings = BatchTimings()
    outcomes = featurize_contents(contents, model, FeaturizeSettings(image_size=8, batch_size=64), timings=timings)

    assert [(o.stage, o.reason) for o in outcomes] == [
        (None, None),
        ("decode", "empty file (0 bytes)"),
        ("decode", "not a recognised image format"),
        (None, None),
    ]
    assert outcomes[1].features is None and outcomes[2].features is None
    np.testing.assert_allclose(outcomes[0].features[:3], [10, 20, 30])
    np.testing.assert_allclose(outcomes[3].features[:3], [200, 100, 0])
    assert len(outcomes[0].features) == 1280
    assert model.batch_sizes == [2]
    assert timings.decode_seconds > 0 and timings.cnn_seconds > 0


def test_model_is_called_in_chunks_of_batch_size():
    contents = [png((i, i, i)) for i in range(10)]
    model = FakeModel()
    outcomes = featurize_contents(contents, model, FeaturizeSettings(image_size=8, batch_size=4))
    assert model.batch_sizes == [4, 4, 2]
    assert [round(float(o.features[0])) for o in outcomes] == list(range(10))


def test_a_batch_of_only_bad_files_never_calls_the_model():
    model = FakeModel()
    outcomes = featurize_contents([b"", b"x"], model, FeaturizeSettings(image_size=8))
    assert model.batch_sizes == []
    assert all(o.reason for o in outcomes)


def test_read_errors_keep_their_place_among_decoded_images():
    fetched = [
        Fetched("a", None, PermanentReadError("deleted after it was listed", code="NoSuchKey")),
        Fetched("b", png((1, 2, 3)), None),
        Fetched("c", b"junk", None),
        Fetched("d", None, RetryableReadError("access denied to this object (AccessDenied)", code="AccessDenied")),
        Fetched("e", png((7, 8, 9)), None),
    ]
    outcomes = featurize_fetched(fetched, FakeModel(), FeaturizeSettings(image_size=8))
    assert [(o.stage, o.reason, o.code, o.retryable) for o in outcomes] == [
        ("read", "deleted after it was listed", "NoSuchKey", False),
        (None, None, None, None),
        ("decode", "not a recognised image format", "", False),
        ("read", "access denied to this object (AccessDenied)", "AccessDenied", True),
        (None, None, None, None),
    ]
    np.testing.assert_allclose(outcomes[1].features[:3], [1, 2, 3])
    np.testing.assert_allclose(outcomes[4].features[:3], [7, 8, 9])
