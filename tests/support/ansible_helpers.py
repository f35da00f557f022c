"""Run ansible-playbook and ansible-inventory from tests, against moto on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import moto
import yaml

from harness.moto import TEST_CREDENTIALS

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CANONICAL = "099720109477"


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def recap(self, host: str = "localhost") -> dict[str, int]:
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        assert match, f"no play recap for {host} in:\n{self.output[-3000:]}"
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **TEST_CREDENTIALS,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        **(extra or {}),
    }


def localhost_inventory(directory: Path) -> Path:
    path = directory / "localhost.yml"
    path.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    )
    return path


def run_playbook(playbook: str, inventory: Path, extra_vars: dict, *args: str, env=None) -> PlaybookRun:
    command = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks" / playbook),
        "-e",
        json.dumps(extra_vars),
        *args,
    ]
    result = subprocess.run(command, env=ansible_env(env), capture_output=True, text=True, cwd=REPO, check=False)
    return PlaybookRun(result.returncode, result.stdout + result.stderr)


def fake_ubuntu_amis() -> list[dict]:
    """moto's own images plus Canonical jammy/noble/bionic entries (moto has only trusty and xenial)."""
    with gzip.open(f"{moto.__path__[0]}/ec2/resources/amis.json.gz") as packed:
        amis = json.loads(packed.read())
    releases = {"bionic-18.04": ("hvm-ssd", "a"), "jammy-22.04": ("hvm-ssd", "b"), "noble-24.04": ("hvm-ssd-gp3", "c")}
    for codename, (store, letter) in releases.items():
        for day, suffix in (("20240101", "1"), ("20250101", "2")):
            amis.append(
                {
                    "ami_id": f"ami-0{letter}{suffix}{'0' * 14}",
                    "state": "available",
                    "public": True,
                    "owner_id": CANONICAL,
                    "image_location": "amazon/getting-started",
                    "root_device_type": "ebs",
                    "root_device_name": "/dev/sda1",
                    "description": f"Canonical, Ubuntu, {codename}",
                    "image_type": "machine",
                    "platform": None,
                    "architecture": "x86_64",
                    "name": f"ubuntu/images/{store}/ubuntu-{codename}-amd64-server-{day}",
                    "virtualization_type": "hvm",
                    "hypervisor": "xen",
                    "creation_date": f"{day[:4]}-{day[4:6]}-01T00:00:00.000Z",
                }
            )
    return amis


def sample_subset(sample_dir: Path, root: Path, per_class: int) -> tuple[int, int]:
    """Copy the first ``per_class`` images of each class of the sample to ``root``; the image and class counts."""
    classes = sorted(d for d in sample_dir.iterdir() if d.is_dir())
    for folder in classes:
        (root / folder.name).mkdir(parents=True)
        for path in sorted(folder.glob("*.jpg"))[:per_class]:
            shutil.copyfile(path, root / folder.name / path.name)
    return sum(1 for _ in root.rglob("*.jpg")), len(classes)


def standin_site_vars(bucket: str, keys: Path, images_dir: Path, run_id: str, reports_dir: Path) -> dict:
    """The extra vars of site.yml on moto and EC2 stand-ins: the user's, but for what moto cannot give."""
    return {
        "fruitcloud_bucket": bucket,
        "fruitcloud_ssh_private_key": str(keys / "fruitcloud.pem"),
        "fruitcloud_known_hosts_file": str(keys / "known_hosts"),
        "aws_infra_ssh_cidr": "198.51.100.7/32",
        # moto's public IPs lead nowhere; configure.yml waits on the inventory's address instead.
        "aws_infra_wait_for_ssh": False,
        # moto enforces the bucket's deny-without-TLS policy and serves plain HTTP here.
        "aws_infra_bucket_require_tls": False,
        "upload_images_dir": str(images_dir),
        "job_run_id": run_id,
        "job_pca_k": 8,
        # Short polls, so that a featurize stage of a few hundred images shows its progress more than once.
        "job_poll_seconds": 2,
        "job_reports_dir": str(reports_dir),
    }


def standin_inventory(directory: Path, endpoint: str, hosts: dict[str, tuple[str, int]], test_weights) -> Path:
    """The repository's aws_ec2 inventory pointed at moto; each host's address and port at its stand-in.

    ``hosts`` maps each instance's Name to its stand-in's (address, SSH port). The other host vars copy
    the s3a jars from the controller's cache (which `make jars` filled with the role's own Maven
    download; the Molecule scenario downloads them on the host) and give the test weights (no Keras
    downloads here); they change where files come from, not how a host is reached.
    """
    inventory = directory / "inventory"
    (inventory / "host_vars").mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
    (inventory / "standin.aws_ec2.yml").write_text(yaml.safe_dump({**config, "endpoint_url": endpoint}))
    weights, checksum = test_weights
    for name, (address, port) in hosts.items():
        host_vars = {
            "ansible_host": address,
            "ansible_port": port,
            "s3a_jars_source": "local",
            "s3a_jars_local_dir": str(REPO / ".cache" / "jars"),
            "model_weights_local_file": str(weights),
            "model_weights_checksum": checksum,
        }
        (inventory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(host_vars))
    return inventory
