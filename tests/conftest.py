"""Shared fixtures: one local Spark session, the Fruits-360 sample, a moto S3 server."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import boto3
import pytest

from harness.launcher import REPO, build_job_zip, calibrated_weights, s3a_conf, s3a_jars, sample_images
from harness.moto import TEST_CREDENTIALS, moto_server

# Markers say what a test needs; those a fixture implies are added here, so they cannot be forgotten.
NEEDS = {
    "spark": "spark",
    "moto_endpoint": "moto",
    "podman_target_image": "container",
    "trixie_target_image": "container",
    "browser": "browser",
}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group markers
def pytest_collection_modifyitems(items):
    for item in items:
        for marker in {NEEDS[name] for name in item.fixturenames if name in NEEDS}:
            item.add_marker(marker)
        if item.get_closest_marker("container") and not item.get_closest_marker("xdist_group"):
            # One worker takes them all, first (the largest group): the stand-in images are built once
            # and the stand-ins' fixed names never meet. A test that names its own group (its own
            # stand-in names, a long run) may go to the other worker.
            item.add_marker(pytest.mark.xdist_group("containers"))


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials():
    """moto's dummy keys for every test; a real profile must never be picked up."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)
    os.environ.update(TEST_CREDENTIALS)


@pytest.fixture(scope="session")
def sample_dir():
    return sample_images()


def standin_image(suite: str) -> str:
    """The EC2 stand-in image of a Debian suite (systemd, sshd, sudo, first-boot unit); its name carries its version."""
    if not shutil.which("podman"):
        pytest.fail("podman is required for the local target: apt-get install podman runc debootstrap zstd")
    built = subprocess.run(
        ["bash", str(REPO / "scripts" / "build_test_image.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "STANDIN_SUITE": suite},
    )
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def podman_target_image():
    """Debian 12: Python 3.11, OpenJDK 17."""
    return standin_image("bookworm")


@pytest.fixture(scope="session")
def trixie_target_image():
    """Debian 13: Python 3.13 and OpenJDK 21, neither of them the controller's (as on Ubuntu 24.04: 3.12)."""
    return standin_image("trixie")


@pytest.fixture(scope="session")
def browser():
    """harness.browser.open_page, once Chromium and its driver are known to be installed (.ci/run installs them)."""
    from harness.browser import chromium_paths, open_page

    chromium_paths()
    return open_page


@pytest.fixture(scope="session")
def test_weights():
    """A weights file shaped like Keras' ImageNet MobileNetV2 no-top file, and its "sha256:" checksum."""
    path = calibrated_weights()
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def moto_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint):
    return boto3.client("s3", endpoint_url=moto_endpoint)


@pytest.fixture
def bucket(s3, request):
    # A hash of the whole test id keeps parametrized tests whose names share 60 characters apart.
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = ("t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()))[:50].strip("-") + "-" + digest
    s3.create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": TEST_CREDENTIALS["AWS_DEFAULT_REGION"]}
    )
    # Versioned, as roles/aws_infra provisions the bucket: deletes leave delete markers behind.
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture(scope="session")
def spark(moto_endpoint):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("fruitcloud-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.jars", ",".join(str(jar) for jar in s3a_jars()))
    )
    for key, value in s3a_conf(moto_endpoint).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    # Python workers import the job from the same zip that spark-submit ships.
    session.sparkContext.addPyFile(str(build_job_zip(REPO / "build" / "featurize-tests.zip")))
    yield session
    session.stop()
