"""Where a run reads and writes: folder URIs as listings spell them, and the checks made before any work."""

from __future__ import annotations

from featurize.errors import LocationsOverlapError, StorageError
from featurize.storage import Storage, is_s3, join, local_path


def canonical(uri: str) -> str:
    """A folder URI as listed paths spell it: ``s3a://bucket/prefix`` or ``file:/abs/dir``, no trailing slash."""
    return uri.rstrip("/") if is_s3(uri) else "file:" + str(local_path(uri)).rstrip("/")


def check_no_overlap(input_uri: str, output_uri: str) -> None:
    """Refuse an output inside the input (the run would read its own outputs) or around it."""
    images, outputs = canonical(input_uri) + "/", canonical(output_uri) + "/"
    if images.startswith(outputs) or outputs.startswith(images):
        raise LocationsOverlapError(
            f"--output {output_uri} and --input {input_uri} overlap: a run would list its own outputs as images "
            "(or a later run's inputs would hold them). Use sibling prefixes, e.g. s3a://BUCKET/images/ and "
            "s3a://BUCKET/runs/"
        )


def check_spark_writes(spark, storage: Storage, run_uri: str) -> None:
    """Create and delete a small object through s3a, the filesystem that saves pca_model.

    Missing or mismatched s3a jars, or credentials that boto3 finds and s3a
    does not, would otherwise fail the run at its very end. Hadoop's
    FileSystem API on the driver checks all three in one PUT and one DELETE
    (about a second, the s3a client's start included), where a Spark write of
    one row took about 10 s.
    """
    if not is_s3(run_uri):
        return
    jvm = spark.sparkContext._jvm
    probe = jvm.org.apache.hadoop.fs.Path(join(run_uri, "_s3a_probe"))
    try:
        filesystem = probe.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
        stream = filesystem.create(probe, True)
        stream.write(bytearray(b"s3a can write here\n"))
        stream.close()
        filesystem.delete(probe, False)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        cause = next((line for line in lines if line.startswith(": ")), lines[0]).lstrip(": ")
        hint = (
            "s3a needs s3:ListBucket on the bucket and s3:PutObject, s3:DeleteObject under the runs prefix "
            "(the aws_infra host policy grants them)"
            if "AccessDenied" in cause
            else "check the s3a jars on the classpath (roles/s3a_jars) and that s3a finds the same credentials as boto3"
        )
        raise StorageError(
            f"Spark cannot write to {run_uri} through s3a ({cause[:300]}): {hint}; nothing was computed"
        ) from exc
    # s3a leaves a marker of the probe's folder (the run's) behind: a failed run writes nothing.
    storage.delete(join(run_uri, ""))
