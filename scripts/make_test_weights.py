"""Write a MobileNetV2 no-top weights file for offline tests and the demo.

ImageNet weights cannot be downloaded here. This file has the exact layout of
Keras' `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`, so
provisioning and `--weights imagenet` are exercised for real; only the
numbers differ. The convolutions keep Keras's random initialisation (fixed
seed); each batch normalisation's statistics are then calibrated, layer by
layer, on Fruits-360 images, so that every layer sees standardised inputs as
in a trained network. Without that, a random MobileNetV2 outputs features of
about 1e-11 that barely differ between images (PCA keeps one component);
with it they vary at a normal scale. They are still not ImageNet features:
classes separate far less than with the real weights.

    python scripts/make_test_weights.py TARGET.h5 [IMAGES_DIR]
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CALIBRATION_IMAGES_PER_CLASS = 2


def calibration_batch(images_dir: Path, size: int):
    import numpy as np

    sys.path.insert(0, str(REPO / "jobs"))
    from featurize.images import decode_image

    files = [
        path
        for folder in sorted(p for p in images_dir.iterdir() if p.is_dir())
        for path in sorted(folder.glob("*.jpg"))[:CALIBRATION_IMAGES_PER_CLASS]
    ]
    pixels = np.stack([decode_image(path.read_bytes(), size) for path in files])
    return pixels.astype(np.float32) / 127.5 - 1.0  # mobilenet_v2.preprocess_input


def calibrate_batch_norms(model, batch) -> None:
    """Set each BatchNormalization's moving statistics to those of its input on ``batch``, in network order."""
    import numpy as np
    import tensorflow as tf

    for layer in model.layers:
        if not isinstance(layer, tf.keras.layers.BatchNormalization):
            continue
        inputs = tf.keras.Model(model.input, layer.input)(batch, training=False).numpy()
        gamma, beta, _, _ = layer.get_weights()
        mean, variance = inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2))
        layer.set_weights([np.ones_like(gamma), np.zeros_like(beta), mean, variance])


def main(target: str, images_dir: str) -> None:
    import h5py
    import tensorflow as tf
    from keras.src.legacy.saving import legacy_h5_format

    path = Path(target)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None)
    calibrate_batch_norms(model, calibration_batch(Path(images_dir), 224))
    partial = path.with_name(path.name + ".partial")
    # The legacy HDF5 layout is the one of Keras' published weight files.
    with h5py.File(partial, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    partial.rename(path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else str(REPO.parent / "shared" / "data" / "fruits-360-sample"))
