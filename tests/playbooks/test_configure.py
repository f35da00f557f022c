"""configure.yml refuses a host ansible-core cannot manage, before anything changes on it."""

from __future__ import annotations

import subprocess

import boto3
import yaml
from support.ansible_helpers import run_playbook
from support.ec2_standin import ec2_standin
from support.fake_imds import fake_imds

from harness.moto import TEST_CREDENTIALS

BIONIC_OS_RELEASE = """NAME="Ubuntu"
VERSION="18.04.6 LTS (Bionic Beaver)"
ID=ubuntu
ID_LIKE=debian
VERSION_ID="18.04"
VERSION_CODENAME=bionic
"""


def test_a_host_that_says_it_is_ubuntu_1804_is_refused_before_any_change(podman_target_image, moto_endpoint, tmp_path):
    key = tmp_path / "fruitcloud.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    ec2.import_key_pair(KeyName="bionic-test", PublicKeyMaterial=key.with_suffix(".pem.pub").read_bytes())
    os_release = tmp_path / "os-release"
    os_release.write_text(BIONIC_OS_RELEASE)
    try:
        with (
            fake_imds(moto_endpoint, role_name="fruitcloud-host", key_name="bionic-test") as (imds_url, _),
            ec2_standin(podman_target_image, "fruitcloud-bionic", imds_url, tmp_path / "standin", os_release) as host,
        ):
            inventory = tmp_path / "inventory.yml"
            hosts = {"fruitcloud-bionic": {"ansible_host": host.address, "ansible_port": host.port}}
            inventory.write_text(yaml.safe_dump({"spark": {"children": {"spark_master": {"hosts": hosts}}}}))
            run = run_playbook(
                "configure.yml",
                inventory,
                {"fruitcloud_ssh_private_key": str(key), "fruitcloud_known_hosts_file": str(tmp_path / "known")},
            )
    finally:
        ec2.delete_key_pair(KeyName="bionic-test")
    assert run.returncode != 0
    said = " ".join(run.output.split())
    assert "fruitcloud-bionic runs ubuntu 18.04 with python3 3.11: ansible-core 2.19 needs Python >= 3.8" in said
    assert "Use Ubuntu 22.04 or 24.04" in said
    recap = run.recap("fruitcloud-bionic")
    assert (recap["changed"], recap["failed"]) == (0, 1), "refused before any change"


def test_a_worker_without_its_master_in_the_run_is_refused_with_the_limit_that_works(tmp_path):
    """`--limit WORKER` once pointed the worker at spark://127.0.0.1:7077: it started and never joined."""
    local = {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"}
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        yaml.safe_dump(
            {
                "spark": {
                    "children": {
                        "spark_master": {"hosts": {"fruitcloud-master": local}},
                        "spark_workers": {"hosts": {"fruitcloud-worker-1": local}},
                    }
                }
            }
        )
    )
    run = run_playbook("configure.yml", inventory, {}, "--limit", "fruitcloud-worker-1")
    assert run.returncode != 0
    said = " ".join(run.output.split())
    assert "no host of spark_master (fruitcloud-master) is in this run" in said
    assert "--limit 'spark_master,fruitcloud-worker-1'" in said
    recap = run.recap("fruitcloud-worker-1")
    assert (recap["changed"], recap["failed"]) == (0, 1), "refused before any change"
