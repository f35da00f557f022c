"""The user's whole path with `playbooks/site.yml`, moto standing in for AWS and a container for EC2.

provision (moto EC2/IAM/S3) -> refresh the aws_ec2 inventory -> configure the
launched host -> upload the shared sample -> run the job -> fetch the report.

moto launches no machine: the `<bucket>-master` instance is played by the EC2
stand-in (tests/support/ec2_standin.py) on Debian 13, the stand-in nearest the
default Ubuntu 24.04 (a Python and a JDK that are not the controller's: 3.13
and 21), which at boot installs the public key of the key pair provision.yml
created, read from the (fake) instance metadata as cloud-init does. The test
inventory redirects only the address and port (moto's public IPs lead
nowhere); user, key, sudo, SSH and host-key checking are the repository's own.
The job has no keys at all: s3a and boto3 take the provisioned role's
credentials from the fake IMDS, as they would on EC2.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import boto3
import pandas as pd
import pytest
from support.ansible_helpers import (
    fake_ubuntu_amis,
    run_playbook,
    sample_subset,
    standin_inventory,
    standin_site_vars,
)
from support.ec2_standin import ec2_standin, ssh
from support.fake_imds import fake_imds

from harness.moto import TEST_CREDENTIALS, moto_server

pytestmark = pytest.mark.container

BUCKET = "fruitcloud-site-test"
# The deployment is named after the bucket, and so is each host.
HOST = f"{BUCKET}-master"
# A run id of the default (timestamp) form, so that job_run_id=latest finds it.
RUN_ID = "20260101T000000Z"
# Every class of the sample, fewer images each: the path is the user's, the minutes
# of CNN time are not what this test is about (the demo and the benchmark run it all).
PER_CLASS = 40


@pytest.fixture
def images(sample_dir, tmp_path) -> tuple[Path, int, int]:
    """A copy of the first PER_CLASS images of each class; returns it, the image count and the class count."""
    root = tmp_path / "images"
    return root, *sample_subset(sample_dir, root, PER_CLASS)


@pytest.fixture
def aws(tmp_path):
    amis = tmp_path / "amis.json"
    amis.write_text(json.dumps(fake_ubuntu_amis()))
    # Instances' consoles: what the stand-in prints at boot, as EC2 serves it.
    console = tmp_path / "console"
    with moto_server(extra_env={"MOTO_AMIS_PATH": str(amis), "MOTO_CONSOLE_DIR": str(console)}) as endpoint:
        yield endpoint


def instance_states(endpoint: str) -> set[str]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    return {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}


def instance_id(endpoint: str, name: str) -> str:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    filters = [{"Name": "tag:Name", "Values": [name]}, {"Name": "instance-state-name", "Values": ["running"]}]
    [reservation] = ec2.describe_instances(Filters=filters)["Reservations"]
    return reservation["Instances"][0]["InstanceId"]


def test_site_provisions_configures_uploads_runs_and_fetches_the_report(
    aws, trixie_target_image, test_weights, images, tmp_path
):
    endpoint = aws
    images_dir, count, classes = images
    key, known_hosts = tmp_path / "keys" / "fruitcloud.pem", tmp_path / "keys" / "known_hosts"
    extra_vars = {
        **standin_site_vars(BUCKET, tmp_path / "keys", images_dir, RUN_ID, tmp_path / "reports"),
        "fruitcloud_aws_endpoint_url": endpoint,
    }
    with (
        fake_imds(endpoint, role_name=f"{BUCKET}-host", key_name=BUCKET) as (imds_url, issued_keys),
        ec2_standin(
            trixie_target_image, HOST, imds_url, tmp_path / "standin", console_dir=tmp_path / "console"
        ) as standin,
    ):
        inventory = standin_inventory(tmp_path, endpoint, {HOST: (standin.address, standin.port)}, test_weights)
        extra_vars["job_environment"] = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": imds_url}
        run = run_playbook("site.yml", inventory, extra_vars)
        (tmp_path / "site.log").write_text(run.output)
        assert run.returncode == 0, run.output[-6000:]
        recap = run.recap(HOST)
        assert (recap["failed"], recap["unreachable"]) == (0, 0)

        # Before the first connection the host's keys were read from its console (EC2's GetConsoleOutput,
        # where the stand-in printed them at boot as cloud-init does) and recorded under the instance id
        # (not the address); every connection since checked them strictly.
        alias = instance_id(endpoint, HOST)
        recorded = subprocess.run(["ssh-keygen", "-F", alias, "-f", str(known_hosts)], capture_output=True, text=True)
        assert recorded.returncode == 0 and "ssh-ed25519" in recorded.stdout, known_hosts.read_text()
        printed = (tmp_path / "console" / f"{HOST}.log").read_text()
        console_keys = {
            " ".join(line.split()[:2]) for line in printed.splitlines() if line.startswith(("ssh-", "ecdsa-"))
        }
        known_keys = {" ".join(line.split()[1:3]) for line in recorded.stdout.splitlines() if not line.startswith("#")}
        assert known_keys == console_keys and len(console_keys) >= 2, (known_keys, console_keys)
        assert "TASK [pin_host_keys | Read the host keys from the instance's console" in run.output
        # The job ran as the unprivileged account, which owns its log; ubuntu only reached it through sudo.
        owners = ssh(
            standin, key, known_hosts, alias, f"sudo -n stat -c %U /var/log/fruitcloud /var/log/fruitcloud/{RUN_ID}.log"
        )
        assert owners.split() == ["fruitcloud", "fruitcloud"]
        assert ssh(standin, key, known_hosts, alias, "sudo -n -l -U fruitcloud || true").count("may run") == 0
        leaked = ssh(
            standin,
            key,
            known_hosts,
            alias,
            "sudo grep -rlF -e "
            + " -e ".join(issued_keys)
            + " /etc/spark /opt/fruitcloud/job /var/log/fruitcloud || true",
        )
        assert leaked == "", f"a credential was written on the host: {leaked}"

        # One more image, then a rerun of the latest run: only that image is featurized.
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
        first = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/manifest.json")["Body"].read())
        extra = sorted((images_dir / "Banana").glob("*.jpg"))[0]
        s3.upload_file(str(extra), BUCKET, "images/Banana/one-more.jpg")
        rerun = run_playbook("run_job.yml", inventory, {**extra_vars, "job_run_id": "latest"})
        jupyter_only = run_playbook("configure.yml", inventory, extra_vars, "--tags", "jupyter")
        failing = run_playbook(
            "run_job.yml", inventory, {**extra_vars, "job_run_id": "broken", "job_input": f"s3a://{BUCKET}/nothing/"}
        )
        stopped = run_playbook("power.yml", inventory, {**extra_vars, "fruitcloud_power": "stopped"})
        stopped_states = instance_states(endpoint)
        started = run_playbook("power.yml", inventory, {**extra_vars, "fruitcloud_power": "running"})
        started_states = instance_states(endpoint)
        # Another key recorded for the instance, as if someone sat between: the next run refuses the host.
        subprocess.run(["ssh-keygen", "-R", alias, "-f", str(known_hosts)], check=True, capture_output=True)
        impostor = tmp_path / "impostor"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
        with known_hosts.open("a") as entries:
            entries.write(f"{alias} {impostor.with_suffix('.pub').read_text()}")
        # A fresh control socket directory: the persistent master of the last run would skip the key check.
        fresh_sockets = {"ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp")}
        # check.yml waits for SSH (fruitcloud_ssh_timeout_seconds) before it reports the refused key.
        tampered = run_playbook(
            "check.yml", inventory, {**extra_vars, "fruitcloud_ssh_timeout_seconds": 10}, env=fresh_sockets
        )
    assert f"{count} files uploaded, 0 unchanged, {classes} classes" in run.output
    assert issued_keys, "the job never asked the instance metadata service for credentials"

    manifest = first
    # Before the rerun's manifest is read, so that a failed rerun shows its own output.
    assert rerun.returncode == 0, rerun.output[-4000:]
    again = json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{RUN_ID}/manifest.json")["Body"].read())
    assert manifest["host"]["user"] == "fruitcloud"
    assert manifest["parameters"]["weights"] == "imagenet"
    assert manifest["counts"]["inputs"] == manifest["counts"]["featurized"] == count
    assert (manifest["counts"]["errors"], manifest["counts"]["classes"], manifest["pca"]["k"]) == (0, classes, 8)

    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"runs/{RUN_ID}/pca/")["Contents"]
    parts = [o["Key"] for o in listed if o["Key"].endswith(".parquet")]
    pca = pd.concat(pd.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in parts)
    assert len(pca) == count + 1, "the projection of the rerun, one image more"
    assert pca["path"].is_unique
    assert {len(vector) for vector in pca["pca"]} == {8}

    fetched = tmp_path / "reports" / RUN_ID
    assert json.loads((fetched / "manifest.json").read_text()) == again
    assert sorted(p.name for p in (fetched / "report").iterdir()) == [
        "class_counts.png",
        "errors_by_reason.png",
        "explained_variance.png",
        "pca_scatter.png",
        "report.html",
        "stage_seconds.png",
    ]
    assert f"images {count}: {count} featurized, 0 errors, {classes} classes" in run.output
    # The job read its instance type and region from IMDS, as on EC2, and run_job.yml printed the estimate.
    assert manifest["cost"]["basis"] == "this instance (t2.medium, eu-west-1)"
    assert manifest["cost"]["total_usd"] > 0
    # (The YAML callback folds long messages: compare with the whitespace collapsed.)
    said = " ".join(run.output.split())
    total = manifest["cost"]["total_usd"]
    assert manifest["cost"]["summary"].startswith(f"cost ${total:.4f}: instance $")
    assert manifest["cost"]["summary"].endswith("; this instance (t2.medium, eu-west-1)")
    assert manifest["cost"]["summary"] in said
    # run_job.yml showed how far the run was while it waited, from the progress object the driver publishes.
    progress = re.findall(rf"run {RUN_ID}: featurizing, (\d+)/{count} images \(\d+ %\), [\d.]+ images/s, ETA ", said)
    # (Tasks report their counts every 5 s: a stage of a few seconds may show 0 until it ends.)
    assert len(progress) >= 2, run.output[-6000:]
    assert f"run {RUN_ID}: featurized {count}/{count} images (100 %) at " in said
    assert "FAILED - RETRYING" not in run.output

    # Stop and start: moto changes the state; the started host is found again by the refreshed
    # inventory and check.yml sees Jupyter answer on it, over SSH.
    assert stopped.returncode == 0 and stopped_states == {"stopped"}, stopped.output[-3000:]
    assert started.returncode == 0 and started_states == {"running"}, started.output[-3000:]
    assert "TASK [Ask JupyterLab for its API status on 127.0.0.1]" in started.output
    assert started.recap(HOST)["failed"] == 0
    assert tampered.returncode != 0 and tampered.recap(HOST)["failed"] == 1, tampered.output[-3000:]
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in tampered.output

    assert f"rerunning {RUN_ID} under s3a://{BUCKET}/runs/" in rerun.output
    # --tags jupyter touches Jupyter's tasks alone; of the other roles only what reads java_home and spark_home runs.
    assert jupyter_only.returncode == 0 and jupyter_only.recap(HOST)["changed"] == 0, jupyter_only.output[-4000:]
    # (Ansible validates every role's arguments whatever the tags.)
    roles_run = set(re.findall(r"^TASK \[(\w+) : (?!Validating arguments)", jupyter_only.output, re.MULTILINE))
    assert roles_run == {"java", "spark", "jupyter"}, roles_run
    read_only = re.findall(
        r"^TASK \[(?:java|spark) : (?!Validating arguments)(.+?)\] ", jupyter_only.output, re.MULTILINE
    )
    assert all(
        name.startswith(("Load the variables", "Install Spark", "install-wheel |", "Expose")) for name in read_only
    ), read_only
    assert (first["counts"]["featurized"], again["counts"]["featurized"]) == (count, count + 1)
    assert (again["incremental"]["featurized_now"], again["incremental"]["reused_images"]) == (1, count)

    assert failing.returncode != 0
    assert "spark-submit exited with 1" in failing.output
    assert "no image files under s3a://" in failing.output, "the driver log tail explains the failure"
    assert not (tmp_path / "reports" / "broken").exists()
