"""The user's whole path with `playbooks/site.yml`, moto standing in for AWS.

provision (moto EC2/IAM/S3) -> refresh the aws_ec2 inventory -> configure the
launched host -> upload the shared sample -> run the job -> fetch the report.

moto launches no machine, so the inventory's one real redirection is the host's
connection: the `fruitcloud-master` instance that provision.yml launched is
reached through podman, in the Debian 12 systemd container of the Molecule
scenario, next to the host vars a test needs (local jars and test weights). The
job on it has no keys at all: s3a and boto3 take the provisioned role's
credentials from a fake IMDS on 127.0.0.1, as they would on EC2.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import boto3
import pandas as pd
import pytest
import yaml
from ansible_helpers import REPO, fake_ubuntu_amis, run_playbook
from fake_imds import fake_imds
from motoserver import TEST_CREDENTIALS, moto_server

pytestmark = pytest.mark.molecule

BUCKET = "fruitcloud-site-test"
CONTAINER = "fruitcloud-site-master"
RUN_ID = "site"


@pytest.fixture
def aws(tmp_path):
    amis = tmp_path / "amis.json"
    amis.write_text(json.dumps(fake_ubuntu_amis()))
    with moto_server(extra_env={"MOTO_AMIS_PATH": str(amis)}) as endpoint:
        yield endpoint


@pytest.fixture
def target(podman_target_image):
    """The container that plays the EC2 host: systemd, host network (moto and IMDS on its 127.0.0.1)."""
    env = {**os.environ, "CONTAINERS_CONF": str(REPO / "molecule" / "containers.conf")}
    subprocess.run(["podman", "rm", "--force", CONTAINER], env=env, check=True, capture_output=True)
    pip_cache = os.environ.get("PIP_CACHE_DIR", "/root/.cache/pip")
    subprocess.run(
        [
            "podman",
            "run",
            "--detach",
            "--name",
            CONTAINER,
            "--hostname",
            "fruitcloud-master",
            "--add-host",
            "fruitcloud-master:127.0.0.1",
            "--network",
            "host",
            "--systemd",
            "always",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=4096:4096",
            "--volume",
            f"{pip_cache}:/root/.cache/pip:rw",
            podman_target_image,
            "/sbin/init",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    # As Molecule's prepare step: trust the controller's extra CAs (TLS-intercepting egress) for pip.
    for certificate in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        subprocess.run(
            ["podman", "cp", str(certificate), f"{CONTAINER}:/usr/local/share/ca-certificates/"], env=env, check=True
        )
    subprocess.run(["podman", "exec", CONTAINER, "update-ca-certificates"], env=env, check=True, capture_output=True)
    yield env
    subprocess.run(["podman", "rm", "--force", CONTAINER], env=env, check=False, capture_output=True)


def flow_inventory(directory, endpoint, test_weights):
    """The repository's aws_ec2 inventory pointed at moto, plus the host's redirection to the container."""
    inventory = directory / "inventory"
    (inventory / "host_vars").mkdir(parents=True)
    config = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
    (inventory / "flow.aws_ec2.yml").write_text(yaml.safe_dump({**config, "endpoint_url": endpoint}))
    weights, checksum = test_weights
    host_vars = {
        "ansible_connection": "containers.podman.podman",
        "ansible_host": CONTAINER,
        "ansible_user": "root",
        "ansible_become_method": "ansible.builtin.su",
        "s3a_jars_source": "local",
        "s3a_jars_local_dir": str(REPO / ".cache" / "jars"),
        "s3a_jars_hadoop_aws_version": "3.3.1",
        "s3a_jars_aws_sdk_version": "1.11.901",
        "s3a_jars_allow_version_mismatch": True,
        "model_weights_local_file": str(weights),
        "model_weights_checksum": checksum,
    }
    (inventory / "host_vars" / "fruitcloud-master.yml").write_text(yaml.safe_dump(host_vars))
    return inventory


def test_site_provisions_configures_uploads_runs_and_fetches_the_report(
    aws, target, test_weights, sample_dir, tmp_path
):
    endpoint = aws
    inventory = flow_inventory(tmp_path, endpoint, test_weights)
    with fake_imds(endpoint, role_name="fruitcloud-host") as (imds_url, issued_keys):
        run = run_playbook(
            "site.yml",
            inventory,
            {
                "fruitcloud_aws_endpoint_url": endpoint,
                "fruitcloud_bucket": BUCKET,
                "aws_infra_ssh_cidr": "198.51.100.7/32",
                "aws_infra_wait_for_ssh": False,
                # moto enforces the bucket's deny-without-TLS policy and serves plain HTTP here.
                "aws_infra_bucket_require_tls": False,
                "aws_infra_private_key_path": str(tmp_path / "keys" / "fruitcloud.pem"),
                "upload_images_dir": str(sample_dir),
                "job_run_id": RUN_ID,
                "job_pca_k": 8,
                "job_poll_seconds": 5,
                "job_reports_dir": str(tmp_path / "reports"),
                "job_environment": {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url},
            },
            env={"CONTAINERS_CONF": target["CONTAINERS_CONF"]},
        )
    (tmp_path / "site.log").write_text(run.output)
    assert run.returncode == 0, run.output[-6000:]
    recap = run.recap("fruitcloud-master")
    assert (recap["failed"], recap["unreachable"]) == (0, 0)
    assert "3976 files uploaded, 0 unchanged, 24 classes" in run.output
    assert issued_keys, "the job never asked the instance metadata service for credentials"

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/manifest.json")["Body"].read())
    assert manifest["parameters"]["weights"] == "imagenet"
    assert manifest["counts"]["inputs"] == manifest["counts"]["featurized"] == 3976
    assert (manifest["counts"]["errors"], manifest["counts"]["classes"], manifest["pca"]["k"]) == (0, 24, 8)

    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{RUN_ID}/pca/")["Contents"]
    parts = [o["Key"] for o in listed if o["Key"].endswith(".parquet")]
    pca = pd.concat(pd.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in parts)
    assert len(pca) == 3976
    assert pca["path"].is_unique
    assert {len(vector["values"]) for vector in pca["pca"]} == {8}

    fetched = tmp_path / "reports" / RUN_ID
    assert json.loads((fetched / "manifest.json").read_text()) == manifest
    assert (fetched / "report" / "report.html").read_text().count("<img") >= 3
    assert "images 3976: 3976 featurized, 0 errors, 24 classes" in run.output

    for key_id in issued_keys:
        found = subprocess.run(
            [
                "podman",
                "exec",
                CONTAINER,
                "grep",
                "-rlF",
                key_id,
                "/etc/spark",
                "/opt/fruitcloud/job",
                "/var/log/fruitcloud",
            ],
            env=target,
            capture_output=True,
            text=True,
            check=False,
        )
        assert found.stdout == "", f"a credential was written on the host: {found.stdout}"
