"""Run the job locally against an S3 endpoint, as the demo, tests and benchmark do.

One place builds the spark-submit command line, so all three exercise the
same s3a settings that the Ansible spark role templates on real hosts, and
one place reads a run's manifest back.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUIET_LOG4J = Path(__file__).with_name("log4j2-warn.properties")
JOBS = REPO / "jobs"
# Filled by `make jars` with the s3a_jars role, which keeps only the pinned versions there.
JARS_DIR = REPO / ".cache" / "jars"
# Beside the repository, as in the team's checkout (README, "Data: Fruits-360"); IMAGES=DIR elsewhere.
SAMPLE_CANDIDATES = (REPO.parent / "shared" / "data" / "fruits-360-sample",)


def sample_images() -> Path:
    override = os.environ.get("IMAGES")
    for candidate in ([Path(override)] if override else []) + list(SAMPLE_CANDIDATES):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        "Fruits-360 sample not found: set IMAGES=DIR (looked in " + ", ".join(str(c) for c in SAMPLE_CANDIDATES) + ")"
    )


def calibrated_weights() -> Path:
    """The test and demo weights (scripts/make_test_weights.py): Keras's file layout, calibrated random values.

    Named by the script that makes them, so a change to the calibration makes a new file; made once,
    under a lock (parallel test workers ask at the same time).
    """
    script = REPO / "scripts" / "make_test_weights.py"
    version = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    path = (
        REPO / ".cache" / "test-weights" / version / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    )
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            partial = path.with_suffix(f".{os.getpid()}.partial.h5")
            subprocess.run([sys.executable, str(script), str(partial), str(sample_images())], check=True)
            os.replace(partial, path)
    return path


def s3a_jars() -> list[Path]:
    jars = sorted(JARS_DIR.glob("*.jar"))
    if not any(jar.name.startswith("hadoop-aws-") for jar in jars):
        raise FileNotFoundError(f"s3a jars missing in {JARS_DIR}: run `make jars`")
    return jars


def build_job_zip(target: Path) -> Path:
    """Zip the ``featurize`` package for --py-files, as the deploy role does on hosts.

    Written beside the target and renamed: a job started by another test may be reading the target.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for source in sorted((JOBS / "featurize").rglob("*.py")):
            archive.write(source, source.relative_to(JOBS))
    os.replace(partial, target)
    return target


# As roles/spark/templates/spark-defaults.conf.j2: s3a writes only the small pca_model
# (the job moves its data with boto3), and these settings cut its requests by a third.
S3A_FEWER_REQUESTS = {
    "spark.hadoop.fs.s3a.directory.marker.retention": "keep",
    "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2",
    "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
}


def s3a_conf(endpoint: str | None) -> dict[str, str]:
    """s3a settings for a local endpoint; with none, Spark talks to AWS itself."""
    conf = {
        "spark.hadoop.fs.s3a.fast.upload": "true",
        "spark.hadoop.fs.s3a.attempts.maximum": "10",
        "spark.hadoop.fs.s3a.retry.limit": "10",
        **S3A_FEWER_REQUESTS,
    }
    if endpoint:
        conf.update(
            {
                "spark.hadoop.fs.s3a.endpoint": endpoint,
                "spark.hadoop.fs.s3a.path.style.access": "true",
                "spark.hadoop.fs.s3a.connection.ssl.enabled": "false",
            }
        )
    return conf


def job_args(input_uri: str, output_uri: str, run_id: str, **options) -> list[str]:
    """The job's command line; each option becomes ``--name value`` (``pca_k=3`` -> ``--pca-k 3``)."""
    args = ["--input", input_uri, "--output", output_uri, "--run-id", run_id]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def spark_submit_command(
    job_args: list[str],
    endpoint: str | None,
    master: str = "local[2,4]",
    driver_memory: str = "1g",
    extra_conf: dict[str, str] | None = None,
    spark_log_level: str = "INFO",
    driver_java_options: tuple[str, ...] = (),
) -> list[str]:
    """The spark-submit line; ``spark_log_level="WARN"`` keeps Spark's own lines out of the console."""
    spark_submit = Path(sys.executable).with_name("spark-submit")
    job_zip = build_job_zip(REPO / "build" / "featurize.zip")
    command = [
        str(spark_submit),
        "--master",
        master,
        "--driver-memory",
        driver_memory,
        "--py-files",
        str(job_zip),
    ]
    # On the class path, as the spark role puts them (spark.driver.extraClassPath): --jars would copy
    # the 600 MB SDK bundle into every run's work directory first (about 2 s of each start here).
    classpath = ":".join(str(jar) for jar in s3a_jars())
    conf = {
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        **s3a_conf(endpoint),
        **(extra_conf or {}),
    }
    java_options = list(driver_java_options)
    if spark_log_level == "WARN":
        java_options.append(f"-Dlog4j2.configurationFile=file:{QUIET_LOG4J}")
        conf["spark.ui.showConsoleProgress"] = str(sys.stderr.isatty()).lower()
    if java_options:
        conf["spark.driver.extraJavaOptions"] = " ".join(java_options)
    for key, value in conf.items():
        command += ["--conf", f"{key}={value}"]
    return [*command, str(JOBS / "featurize_images.py"), *job_args]


def job_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the spark role gives executors: the venv's Python, TensorFlow quiet, few malloc arenas."""
    return {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "MALLOC_ARENA_MAX": "2",
        **(env or {}),
    }


def run_job(
    job_args: list[str], endpoint: str | None, env: dict[str, str] | None = None, *, capture: bool = False, **kwargs
) -> subprocess.CompletedProcess:
    """spark-submit the job; with ``capture``, its log (the driver's lines and Spark's, merged) is in ``stdout``."""
    command = spark_submit_command(job_args, endpoint, **kwargs)
    if not capture:
        return subprocess.run(command, env=job_environment(env), check=False)
    return subprocess.run(
        command, env=job_environment(env), check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def read_manifest(output_uri: str, run_id: str, s3_client=None) -> dict:
    """The manifest of a run under ``output_uri`` (s3a://bucket/prefix/ with a boto3 client, or a local folder)."""
    if output_uri.startswith(("s3a://", "s3://")):
        bucket, _, prefix = output_uri.split("://", 1)[1].partition("/")
        key = f"{prefix.rstrip('/')}/{run_id}/manifest.json".lstrip("/")
        return json.loads(s3_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    root = Path(output_uri.removeprefix("file://").removeprefix("file:"))
    return json.loads((root / run_id / "manifest.json").read_text())


def upload_tree(s3_client, root: Path, bucket: str, prefix: str, workers: int = 16) -> int:
    """Upload every file under ``root`` to ``s3://bucket/prefix/<relative path>``."""
    files = [path for path in sorted(root.rglob("*")) if path.is_file()]

    def upload(path: Path) -> None:
        s3_client.upload_file(str(path), bucket, f"{prefix.strip('/')}/{path.relative_to(root).as_posix()}")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(upload, files))
    return len(files)
