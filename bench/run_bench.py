"""`make bench`: where the time goes, against a bare-TensorFlow limit and the usual notebook pipeline.

One run, same images (the Fruits-360 sample), same cores, same image size:
limit (bare TF), our featurization stage, our end to end over S3 (moto on
127.0.0.1), the peer notebook pipeline end to end, scaling at 1x/4x/16x, and
peak RSS of the whole process tree with the 4 GB host settings. Prints a table
with targets and writes bench/results/bench.json and bench.md.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "jobs"), str(REPO / "scripts")]

from featurize.images import decode_image  # noqa: E402
from featurize.job import DEFAULT_FILES_PER_PARTITION  # noqa: E402
from localrun import build_job_zip, sample_images, spark_submit_command, upload_tree  # noqa: E402
from motoserver import TEST_CREDENTIALS, moto_server  # noqa: E402

IMAGE_SIZE = int(os.environ.get("BENCH_IMAGE_SIZE", "160"))
SCALES = [int(s) for s in os.environ.get("BENCH_SCALES", "1,4,16").split(",")]
CORES = 2
BATCH_SIZE = 32
# Timed passes of the limit (per batch size) and of the featurization stage; the best is kept.
PASSES = 3
# The 4 GB t2.medium settings that roles/spark/defaults/main.yml templates:
# 25 % of RAM to the JVM, the rest to the TensorFlow Python workers and the OS.
HOST_4GB_CONF = {"spark.driver.memory": f"{int(4096 * 0.25)}m"}
BUCKET = "fruitcloud-bench"
RESULTS = REPO / "bench" / "results"


def bare_tf_limit(images: list[bytes]) -> dict:
    """MobileNetV2 without top on decoded images in memory, compiled call, best batch size.

    Each batch size is timed PASSES times and its best pass kept; the featurization
    stage is timed the same way, so both sides get the same allowance for noise.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(CORES)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    model = tf.keras.applications.MobileNetV2(
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), include_top=False, pooling="avg", weights=None
    )
    started = time.perf_counter()
    decoded = np.stack([decode_image(data, IMAGE_SIZE) for data in images])
    decode_rate = len(images) / (time.perf_counter() - started)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)])
    def extract(batch):
        return model(tf.keras.applications.mobilenet_v2.preprocess_input(tf.cast(batch, tf.float32)), training=False)

    rates, predict_rates = {}, {}
    sample = decoded[:1024]
    for batch_size in (8, 16, 32, 64, 128):
        extract(sample[:batch_size])
        passes = []
        for _ in range(PASSES):
            started = time.perf_counter()
            for start in range(0, len(sample), batch_size):
                extract(sample[start : start + batch_size]).numpy()
            passes.append(len(sample) / (time.perf_counter() - started))
        rates[batch_size] = max(passes)
        model.predict(sample[:batch_size], verbose=0)
        started = time.perf_counter()
        for start in range(0, len(sample), batch_size):
            model.predict(sample[start : start + batch_size].astype(np.float32) / 127.5 - 1, verbose=0)
        predict_rates[batch_size] = len(sample) / (time.perf_counter() - started)
    best = max(rates, key=rates.get)
    return {
        "images_per_s": rates[best],
        "best_batch": best,
        "by_batch": rates,
        "predict_by_batch": predict_rates,
        "decode_images_per_s_one_core": decode_rate,
    }


def featurization_stage(uri: str, n_images: int) -> dict:
    """The job's UDF alone, on image bytes already cached in Spark (no storage in the timing)."""
    from featurize import pipeline
    from featurize.batch import FeaturizeSettings
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(f"local[{CORES}]").config("spark.ui.enabled", "false")
    for key, value in HOST_4GB_CONF.items():
        builder = builder.config(key, value)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = builder.getOrCreate()
    spark.sparkContext.addPyFile(str(build_job_zip(REPO / "build" / "featurize-bench.zip")))
    try:
        stats = pipeline.list_inputs(spark, uri)
        pipeline.plan_partitions(spark, stats.images, DEFAULT_FILES_PER_PARTITION, stats.average_bytes)
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH_SIZE))
        images = pipeline.load_images(spark, uri).cache()
        images.count()
        settings = FeaturizeSettings(weights="none", image_size=IMAGE_SIZE, batch_size=BATCH_SIZE, tf_threads=1)
        udf = pipeline.make_featurize_udf(settings)
        # Build the model in every Python worker first, as the limit's warm-up call compiles its graph:
        # one task per core at once, so each pooled worker the timed run reuses has its model.
        warm_up = images.limit(CORES * BATCH_SIZE).repartition(CORES)
        pipeline.featurize(warm_up, udf).write.format("noop").mode("overwrite").save()
        passes = []
        for _ in range(PASSES):
            started = time.perf_counter()
            pipeline.featurize(images, udf).write.format("noop").mode("overwrite").save()
            passes.append(time.perf_counter() - started)
        partitions = images.rdd.getNumPartitions()
    finally:
        spark.stop()
    return {
        "images_per_s": n_images / min(passes),
        "seconds": min(passes),
        "seconds_per_pass": passes,
        "partitions": partitions,
    }


class TreeMemory:
    """Peak memory of a process and all its descendants (JVM + Python workers), sampled.

    Counted as PSS: Spark forks its Python workers from one daemon, and plain
    RSS would count their shared pages once per process.
    """

    def __init__(self, pid: int, interval: float = 0.5):
        self.root = psutil.Process(pid)
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
                total = 0
                for process in processes:
                    with contextlib.suppress(psutil.Error):
                        total += process.memory_full_info().pss
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_measured(command: list[str]) -> tuple[float, int, str]:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, **TEST_CREDENTIALS}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(process.pid)
    output, _ = process.communicate()
    peak = memory.stop()
    if process.returncode != 0:
        raise RuntimeError(f"command failed ({process.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, peak, output


def replicate_on_disk(root: Path, target: Path, scale: int) -> Path:
    """``scale`` copies of the sample under distinct paths (copyNN/<class>/<file>), as hard links."""
    for copy in range(scale):
        for path in root.rglob("*.jpg"):
            link = target / f"copy{copy:02d}" / path.relative_to(root)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.link(path, link)
    return target


def our_end_to_end(endpoint: str | None, input_uri: str, output_uri: str, run_id: str) -> dict:
    args = [
        "--input",
        input_uri,
        "--output",
        output_uri,
        "--run-id",
        run_id,
        "--weights",
        "none",
        "--image-size",
        str(IMAGE_SIZE),
    ]
    command = spark_submit_command(
        args, endpoint, master=f"local[{CORES}]", driver_memory=HOST_4GB_CONF["spark.driver.memory"]
    )
    wall, peak, _ = run_measured(command)
    if endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        key = f"{output_uri.split('/', 3)[3]}{run_id}/manifest.json"
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    else:
        manifest = json.loads((Path(output_uri.removeprefix("file://")) / run_id / "manifest.json").read_text())
    return {"wall_s": wall, "peak_rss_bytes": peak, "manifest": manifest}


def peer_end_to_end(endpoint: str) -> dict:
    command = spark_submit_command(
        [], endpoint, master=f"local[{CORES}]", driver_memory=HOST_4GB_CONF["spark.driver.memory"]
    )
    command = command[: command.index(str(REPO / "jobs" / "featurize_images.py"))]
    command += [
        str(REPO / "bench" / "peer_pipeline.py"),
        f"s3a://{BUCKET}/images/",
        f"s3a://{BUCKET}/peer/",
        str(IMAGE_SIZE),
    ]
    wall, peak, _ = run_measured(command)
    return {"wall_s": wall, "peak_rss_bytes": peak}


def scaling_row(run: dict) -> dict:
    count = run["manifest"]["counts"]["inputs"]
    return {
        "images": count,
        "wall_s": run["wall_s"],
        "s_per_image": run["wall_s"] / count,
        "peak_rss_bytes": run["peak_rss_bytes"],
        "stages_s": run["manifest"]["timing"]["stages_seconds"],
        "worker_cpu_s": run["manifest"]["timing"]["worker_cpu_seconds"],
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    if sys.argv[1:2] == ["--summarize"]:
        print(summarize(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    os.environ.update(TEST_CREDENTIALS)
    root = sample_images()
    files = sorted(root.rglob("*.jpg"))
    images = [path.read_bytes() for path in files]
    n = len(images)
    results: dict = {
        "machine": {
            "cpus": psutil.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "image_size": IMAGE_SIZE,
        "cores": CORES,
        "images_1x": n,
        "spark_conf": HOST_4GB_CONF,
    }
    print(f"benchmark: {n} images, {IMAGE_SIZE}px, {CORES} cores", flush=True)

    results["limit"] = bare_tf_limit(images)
    print(f"limit: {results['limit']['images_per_s']:.1f} img/s (batch {results['limit']['best_batch']})", flush=True)

    results["featurization"] = featurization_stage(root.as_uri(), n)
    print(f"featurization stage: {results['featurization']['images_per_s']:.1f} img/s", flush=True)

    with moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        upload_tree(s3, root, BUCKET, "images")
        run = our_end_to_end(endpoint, f"s3a://{BUCKET}/images/", f"s3a://{BUCKET}/runs/", "bench-s3")
        results["s3"] = scaling_row(run)
        print(f"ours end to end over S3 (moto): {run['wall_s']:.1f}s", flush=True)
        results["peer"] = peer_end_to_end(endpoint)
        print(f"peer end to end over S3 (moto): {results['peer']['wall_s']:.1f}s", flush=True)

    results["scaling"] = {}
    with tempfile.TemporaryDirectory(prefix="fruitcloud-bench-") as scratch:
        for scale in SCALES:
            data = replicate_on_disk(root, Path(scratch) / f"x{scale}", scale)
            run = our_end_to_end(None, data.as_uri(), (Path(scratch) / "runs").as_uri() + "/", f"x{scale}")
            results["scaling"][scale] = scaling_row(run)
            print(
                f"ours end to end x{scale} (local disk): {run['manifest']['counts']['inputs']} images in "
                f"{run['wall_s']:.1f}s, peak {run['peak_rss_bytes'] / 2**30:.2f} GB",
                flush=True,
            )

    report = summarize(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / "bench.md").write_text(report)
    print("\n" + report)
    return 0


def summarize(results: dict) -> str:
    limit = results["limit"]["images_per_s"]
    feat = results["featurization"]["images_per_s"]
    ours = results["s3"]
    peer = results["peer"]["wall_s"]
    results["scaling"] = {int(scale): row for scale, row in results["scaling"].items()}
    largest = max(results["scaling"])
    per_image = {scale: row["s_per_image"] for scale, row in results["scaling"].items()}
    drift = per_image[largest] / per_image[1] - 1
    scales = sorted(results["scaling"])
    marginal = [
        (results["scaling"][b]["wall_s"] - results["scaling"][a]["wall_s"])
        / (results["scaling"][b]["images"] - results["scaling"][a]["images"])
        for a, b in itertools.pairwise(scales)
    ]
    marginal_drift = marginal[-1] / marginal[0] - 1 if len(marginal) > 1 else 0.0
    peak = results["scaling"][largest]["peak_rss_bytes"]
    projected_90k = per_image[largest] * 90_000
    lines = [
        f"# Benchmark ({results['images_1x']} Fruits-360 images, {results['image_size']} px, {results['cores']} cores, "
        f"{results['machine']['ram_gb']} GB RAM, driver heap {results['spark_conf']['spark.driver.memory']})",
        "",
        "| measure | value | target | ratio | verdict |",
        "|---|---:|---|---:|---|",
        f"| bare TF limit (batch {results['limit']['best_batch']}) | {limit:.1f} img/s | | | |",
        f"| `model.predict` per batch | {max(results['limit']['predict_by_batch'].values()):.1f} img/s | | | |",
        f"| our featurization stage | {feat:.1f} img/s | ≥ 90 % of limit | {feat / limit:.2f} "
        f"| {verdict(feat >= 0.9 * limit)} |",
        f"| our end to end x1, S3 (moto) | {ours['wall_s']:.1f} s "
        f"({ours['images'] / ours['wall_s']:.1f} img/s) | | | |",
        f"| peer notebook end to end x1, S3 (moto) | {peer:.1f} s | ours ≥ 2x faster | {peer / ours['wall_s']:.2f}x | "
        f"{verdict(peer >= 2 * ours['wall_s'])} |",
    ]
    for scale, row in sorted(results["scaling"].items()):
        lines.append(
            f"| end to end x{scale}, local disk ({row['images']} images) | {row['wall_s']:.1f} s, "
            f"{1000 * row['s_per_image']:.2f} ms/image | | | |"
        )
    lines += [
        f"| time per image x{largest} vs x1 | {100 * drift:+.1f} % | within 15 % | "
        f"| {verdict(abs(drift) <= 0.15)} |",
        f"| marginal time per image x{scales[-2]}→x{largest} vs x1→x{scales[1]} | "
        f"{1000 * marginal[-1]:.2f} vs {1000 * marginal[0]:.2f} ms ({100 * marginal_drift:+.1f} %) "
        "| linear: within 15 % "
        f"| | {verdict(abs(marginal_drift) <= 0.15)} |",
        f"| peak memory x{largest}, PSS of JVM + Python workers | {peak / 2**30:.2f} GB | ≤ 3 GB | "
        f"| {verdict(peak <= 3 * 2**30)} |",
        f"| projected 90,000 images on this machine | {projected_90k / 60:.0f} min | | | |",
        "",
        f"## Where the time goes (x{largest} from local disk, and x1 over S3; seconds)",
        "",
        f"| stage | x{largest} local | x1 S3 |",
        "|---|---:|---:|",
    ]
    row, s3_row = results["scaling"][largest], results["s3"]
    for stage, seconds in row["stages_s"].items():
        lines.append(f"| {stage} | {seconds:.1f} | {s3_row['stages_s'].get(stage, 0):.1f} |")
    lines += [
        f"| (inside featurize) decode, CPU-seconds over workers | {row['worker_cpu_s']['decode']:.1f} "
        f"| {s3_row['worker_cpu_s']['decode']:.1f} |",
        f"| (inside featurize) CNN, CPU-seconds over workers | {row['worker_cpu_s']['cnn']:.1f} "
        f"| {s3_row['worker_cpu_s']['cnn']:.1f} |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
