import io

import numpy as np
import pandas as pd
from featurize.batch import BatchTimings, FeaturizeSettings, featurize_batch
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


def test_good_rows_get_features_and_bad_rows_get_errors_in_input_order():
    contents = pd.Series([png((10, 20, 30)), b"", b"junk", png((200, 100, 0))])
    model = FakeModel()
    timings = BatchTimings()
    result = featurize_batch(contents, model, FeaturizeSettings(image_size=8, batch_size=64), timings=timings)

    assert list(result.columns) == ["features", "error_stage", "error"]
    assert result["error"].tolist()[1:3] == ["empty file (0 bytes)", "not a recognised image format"]
    assert result["error_stage"].tolist() == [None, "decode", "decode", None]
    assert result["features"][1] is None and result["features"][2] is None
    np.testing.assert_allclose(result["features"][0][:3], [10, 20, 30])
    np.testing.assert_allclose(result["features"][3][:3], [200, 100, 0])
    assert len(result["features"][0]) == 1280
    assert model.batch_sizes == [2]
    assert timings.decode_seconds > 0 and timings.cnn_seconds > 0


def test_model_is_called_in_chunks_of_batch_size():
    contents = pd.Series([png((i, i, i)) for i in range(10)])
    model = FakeModel()
    result = featurize_batch(contents, model, FeaturizeSettings(image_size=8, batch_size=4))
    assert model.batch_sizes == [4, 4, 2]
    assert [round(float(v[0])) for v in result["features"]] == list(range(10))


def test_a_batch_of_only_bad_files_never_calls_the_model():
    model = FakeModel()
    result = featurize_batch(pd.Series([b"", b"x"]), model, FeaturizeSettings(image_size=8))
    assert model.batch_sizes == []
    assert result["error"].notna().all()
