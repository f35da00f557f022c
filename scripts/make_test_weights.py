"""Write a MobileNetV2 no-top weights file for offline tests.

ImageNet weights cannot be downloaded here. This file has the exact layout of
Keras' `mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5`
(random values, fixed seed), so provisioning and `--weights imagenet` are
exercised for real; only the numbers differ.
"""

import sys
from pathlib import Path


def main(target: str) -> None:
    import h5py
    import tensorflow as tf
    from keras.src.legacy.saving import legacy_h5_format

    path = Path(target)
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.MobileNetV2(input_shape=(224, 224, 3), include_top=False, pooling="avg", weights=None)
    partial = path.with_name(path.name + ".partial")
    # The legacy HDF5 layout is the one of Keras' published weight files.
    with h5py.File(partial, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)
    partial.rename(path)


if __name__ == "__main__":
    main(sys.argv[1])
