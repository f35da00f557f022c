"""Start the EC2 stand-in: the podman container a test reaches as EC2 hosts are reached.

podman plays the hypervisor only: it boots the image (systemd as PID 1, host
network so moto and the fake IMDS on 127.0.0.1 are reachable) and hands the
first-boot unit its settings, as EC2 hands cloud-init the instance metadata.
Tests then talk to the host over SSH as `ubuntu` with the key pair's private
key and become root with sudo, never through podman.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from harness.moto import free_port
from support.ansible_helpers import REPO

CONTAINERS_ENV = {"CONTAINERS_CONF": str(REPO / "molecule" / "containers.conf")}
CA_CERTIFICATES = Path("/usr/local/share/ca-certificates")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", *args], env={**os.environ, **CONTAINERS_ENV}, check=check, capture_output=True, text=True
    )


@contextmanager
def ec2_standin(
    image: str,
    name: str,
    imds_url: str,
    settings_dir: Path,
    os_release: Path | None = None,
    console_dir: Path | None = None,
):
    """Boot a stand-in host; yield the loopback port its sshd listens on.

    ``console_dir`` plays its serial console: it writes ``<name>.log`` there at boot, as moto serves it
    (harness.moto_as_aws, MOTO_CONSOLE_DIR).
    """
    port = free_port()
    settings_dir.mkdir(parents=True, exist_ok=True)
    (settings_dir / "imds_url").write_text(imds_url)
    (settings_dir / "ssh_port").write_text(str(port))
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
        "--add-host",
        f"{name}:127.0.0.1",
        "--network",
        "host",
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
        yield port
    finally:
        podman("rm", "--force", name, check=False)
