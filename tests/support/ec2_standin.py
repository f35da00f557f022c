"""Start the EC2 stand-in: the podman container a test reaches as EC2 hosts are reached.

podman plays the hypervisor only: it boots the image (systemd as PID 1) and
hands the first-boot unit its settings, as EC2 hands cloud-init the instance
metadata. A lone host shares the host network (moto and the fake IMDS on
127.0.0.1), its sshd on a loopback port; the hosts of a cluster get a private
network the test made, each its own address with sshd on port 22, as a VPC
subnet gives them, and reach moto and IMDS at the network's gateway.
Tests then talk to the host over SSH as `ubuntu` with the key pair's private
key and become root with sudo, never through podman.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from harness.moto import free_port
from support.ansible_helpers import REPO

CONTAINERS_ENV = {"CONTAINERS_CONF": str(REPO / "molecule" / "containers.conf")}
CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env={**os.environ, **CONTAINERS_ENV}, check=check, capture_output=True, text=True
    )


@dataclass(frozen=True)
class Standin:
    name: str
    address: str
    port: int
    settings_dir: Path

    def hand_metadata_service(self, imds_url: str) -> None:
        """Its first boot waits for this: the URL at which the host finds its instance metadata."""
        (self.settings_dir / "imds_url").write_text(imds_url)


def write_first_boot_settings(settings_dir: Path, imds_url: str | None, ssh_port: int, ssh_listen_address: str) -> None:
    """What the first-boot unit reads from /etc/ec2-standin (standin_image/cloud-init-standin.py)."""
    settings_dir.mkdir(parents=True, exist_ok=True)
    if imds_url is not None:
        (settings_dir / "imds_url").write_text(imds_url)
    (settings_dir / "ssh_port").write_text(str(ssh_port))
    (settings_dir / "ssh_listen_address").write_text(ssh_listen_address)


@contextmanager
def private_network(name: str):
    """A podman bridge network for a cluster's stand-ins; yields its gateway, the host's address on it."""
    podman("network", "rm", "--force", name, check=False)
    podman("network", "create", name)
    try:
        [subnet] = json.loads(podman("network", "inspect", name).stdout)[0]["subnets"]
        yield subnet["gateway"]
    finally:
        podman("network", "rm", "--force", name, check=False)


@contextmanager
def ec2_standin(
    image: str,
    name: str,
    imds_url: str | None,
    settings_dir: Path,
    os_release: Path | None = None,
    console_dir: Path | None = None,
    network: str | None = None,
):
    """Boot a stand-in host; yield its Standin (where its sshd listens).

    ``console_dir`` plays its serial console: it writes ``<name>.log`` there at boot, as moto serves it
    (harness.moto_as_aws, MOTO_CONSOLE_DIR). With ``network`` the host joins that private network; without
    ``imds_url`` its first boot waits until Standin.hand_metadata_service is called.
    """
    port = 22 if network else free_port()
    write_first_boot_settings(settings_dir, imds_url, port, "0.0.0.0" if network else "127.0.0.1")
    pip_cache = os.environ.get("PIP_CACHE_DIR", "/root/.cache/pip")
    volumes = [f"{settings_dir}:/etc/ec2-standin:ro", f"{pip_cache}:/root/.cache/pip:rw"]
    # The machine image trusts the same extra CAs as this network's egress, as a company AMI would.
    if CA_CERTIFICATES.is_dir():
        volumes.append(f"{CA_CERTIFICATES}:/usr/local/share/ca-certificates:ro")
    if os_release is not None:
        volumes.append(f"{os_release}:/etc/os-release:ro")
    if console_dir is not None:
        console_dir.mkdir(parents=True, exist_ok=True)
        volumes.append(f"{console_dir}:/var/lib/ec2-standin-console:rw")
    podman("rm", "--force", name)
    podman(
        "run",
        "--detach",
        "--name",
        name,
        "--hostname",
        name,
        *(["--network", network] if network else ["--add-host", f"{name}:127.0.0.1", "--network", "host"]),
        "--systemd",
        "always",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=4096:4096",
        *(option for volume in volumes for option in ("--volume", volume)),
        image,
        "/sbin/init",
    )
    try:
        if network:
            networks = json.loads(podman("inspect", name).stdout)[0]["NetworkSettings"]["Networks"]
            address = networks[network]["IPAddress"]
        else:
            address = "127.0.0.1"
        yield Standin(name, address, port, settings_dir)
    finally:
        podman("rm", "--force", name, check=False)


def ssh(host: Standin, key: Path, known_hosts: Path, alias: str, command: str) -> str:
    """Run a command on the stand-in as the README's user does: ubuntu, the key pair, the host key recorded for it."""
    result = subprocess.run(
        [
            "ssh",
            "-p",
            str(host.port),
            "-i",
            str(key),
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            f"HostKeyAlias={alias}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            f"ubuntu@{host.address}",
            command,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout
