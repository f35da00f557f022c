"""Command line of the job: arguments bounded to what a 4 GB host can hold, logging, exit codes.

    spark-submit --py-files featurize.zip jobs/featurize_images.py \\
        --input s3a://BUCKET/images/ --output s3a://BUCKET/runs/ --weights imagenet
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import fields
from datetime import datetime, timezone

from featurize.config import JobConfig, default
from featurize.cost import load_prices
from featurize.errors import JobError, UnreadInputsError
from featurize.images import IMAGE_EXTENSIONS
from featurize.model import BATCH_SIZES, FEATURE_DIM, RUNTIMES, check_weights

log = logging.getLogger("featurize")

EXIT_USAGE = 2
EXIT_FAILED = 1
# Complete but for images that could not be read this time; a rerun of the run id retries them.
EXIT_RETRY = 3

# MobileNetV2's activations take about 3.5 MB per 224 px image in a batch; 128
# of them (~0.5 GB per task slot) is what two slots of a 4 GB host can hold.
MAX_BATCH_PIXELS = 128 * 224 * 224
# These loggers write request headers (the access key id, the session token) at DEBUG.
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {text}")
        return value

    return parse


def default_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurize_images.py",
        description=(
            "Featurize images with MobileNetV2 (no top) in a pandas UDF, reduce them with "
            "pyspark.ml PCA, and write Parquet outputs under OUTPUT/RUN_ID/."
        ),
        epilog=(
            "Images: files ending in " + ", ".join(IMAGE_EXTENSIONS) + " (any case), found "
            "recursively; the label is the parent folder's name. S3 endpoint and credentials "
            "come from spark.hadoop.fs.s3a.endpoint and the AWS credential chain (instance "
            "profile on EC2), never from arguments."
        ),
    )
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    _add_run_arguments(parser)
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="image root: s3a://BUCKET/PREFIX/, file:///DIR/ or a path")
    parser.add_argument("--output", required=True, help="output root; the run writes OUTPUT/RUN_ID/")
    parser.add_argument(
        "--max-image-pixels",
        type=_bounded_int(1, 100_000_000),
        default=default("max_image_pixels"),
        help="refuse images with more pixels, checked from the header (default: %(default)s)",
    )
    parser.add_argument(
        "--max-decode-mb",
        type=_bounded_int(16, 1024),
        default=default("max_decode_mb"),
        help="refuse images whose decoding is estimated to need more memory (default: %(default)s)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        default=default("weights"),
        help="imagenet (Keras cache file, provisioned on hosts), none (random init, offline tests) "
        "or PATH to a weights file (default: %(default)s)",
    )
    parser.add_argument(
        "--image-size",
        type=_bounded_int(32, 512),
        default=default("image_size"),
        help="CNN input size (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_bounded_int(1, 512),
        default=default("batch_size"),
        help="images per CNN call (default: the fastest for the runtime, "
        + ", ".join(f"{runtime} {size}" for runtime, size in BATCH_SIZES.items())
        + ")",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=default("runtime"),
        help="CNN runtime: tflite (the model converted once per host, run by LiteRT with XNNPACK: about 1.8x "
        "faster, a fifth of the memory) or keras (default: %(default)s)",
    )
    pca = parser.add_mutually_exclusive_group()
    pca.add_argument(
        "--pca-variance",
        type=_fraction,
        default=default("pca_variance"),
        help="keep the fewest components reaching this explained variance (default: %(default)s)",
    )
    pca.add_argument("--pca-k", type=_bounded_int(1, FEATURE_DIM), help="keep exactly this many components")
    parser.add_argument(
        "--tf-threads", type=_bounded_int(1, 256), default=None, help="TensorFlow threads per task (spark.task.cpus)"
    )


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", default=None, help="name of the run folder (default: UTC timestamp)")
    parser.add_argument(
        "--files-per-partition",
        type=_bounded_int(1, 100_000),
        default=default("files_per_partition"),
        help="images per Spark task (default: %(default)s)",
    )
    parser.add_argument(
        "--commit-every",
        type=_bounded_int(16, 100_000),
        default=default("commit_every"),
        help="images per committed chunk: a crash loses at most this many per running task (default: %(default)s)",
    )
    parser.add_argument(
        "--fetch-concurrency",
        type=_bounded_int(1, 128),
        default=default("fetch_concurrency"),
        help="image reads in flight per task, ahead of the CNN (default: %(default)s)",
    )
    parser.add_argument(
        "--lock-ttl-hours",
        type=_bounded_int(1, 168),
        default=default("lock_ttl_hours"),
        help="a run's lock expires after this long, should the run die (default: %(default)s)",
    )
    parser.add_argument("--break-lock", action="store_true", help="take the run's lock even if another run holds it")
    parser.add_argument("--log-level", default=default("log_level"), choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--prices",
        default=None,
        metavar="FILE",
        help="JSON price table laid over the defaults of the cost estimate, by region (see docs/costs.md)",
    )
    parser.add_argument(
        "--cpu-credits",
        choices=["unlimited", "standard"],
        default=default("cpu_credits"),
        help="credit mode of burstable hosts, as provisioned: unlimited pays a surplus past the baseline "
        "(default: %(default)s)",
    )


def parse_args(argv: list[str] | None = None) -> JobConfig:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.pca_k is not None:
        args.pca_variance = None
    args.run_id = args.run_id or default_run_id()
    if "/" in args.run_id or not args.run_id.strip():
        parser.error(f"--run-id must be a non-empty name without '/': {args.run_id!r}")
    batch_size = args.batch_size or BATCH_SIZES[args.runtime]
    if batch_size * args.image_size**2 > MAX_BATCH_PIXELS:
        largest = MAX_BATCH_PIXELS // args.image_size**2
        parser.error(
            f"--batch-size {batch_size} at --image-size {args.image_size} needs about "
            f"{batch_size * args.image_size**2 * 3.5e6 / 224**2 / 2**30:.1f} GiB of CNN activations per task; "
            f"a 4 GB host holds at most {largest} at this size"
        )
    if args.prices:
        try:
            load_prices(args.prices)
        except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
            parser.error(
                f"--prices {args.prices}: not a price table ({exc}); expected JSON such as "
                '{"eu-west-1": {"instance_hour": {"m7i.large": 0.1058}}} (docs/costs.md)'
            )
    return JobConfig(**{field.name: getattr(args, field.name) for field in fields(JobConfig)})


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for name in CREDENTIAL_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))
    # One line per Python-JVM connection, at INFO: noise between the stage lines.
    logging.getLogger("py4j").setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    from featurize.job import execute

    config = parse_args(argv)
    configure_logging(config.log_level)
    try:
        check_weights(config.weights, config.image_size)
    except JobError as exc:
        log.error("%s", exc)
        return EXIT_USAGE

    from pyspark.sql import SparkSession

    spark = SparkSession.builder.appName(f"featurize-{config.run_id}").getOrCreate()
    try:
        execute(spark, config)
    except UnreadInputsError as exc:
        log.error("run %s incomplete: %s", config.run_id, exc)
        return EXIT_RETRY
    except JobError as exc:
        log.error("run %s failed: %s", config.run_id, exc)
        return EXIT_FAILED
    finally:
        spark.stop()
    return 0
