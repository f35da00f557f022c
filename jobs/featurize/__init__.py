"""Image featurization job: images in S3 (or files) to CNN features and a PCA projection.

The package imports without a running Spark; Spark and TensorFlow are only
touched by the functions that need them.
"""

__version__ = "0.1.0"
