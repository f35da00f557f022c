#!/usr/bin/python3
"""What cloud-init does at first boot of an Ubuntu EC2 instance, for the test stand-in.

Creates the default user `ubuntu` with passwordless sudo, generates this
host's SSH host keys, and installs the key pair's public key as ubuntu's only
authorized key, read from the instance metadata service (IMDSv2), which serves
it once provision.yml has created the key pair. It prints the host keys as
cloud-init does to the serial console (a folder the test hands to moto's
GetConsoleOutput). sshd starts only after this
unit (ssh.service drop-in), on the address and port the test assigned: a loopback
port for a host on the host network, port 22 for one on a private network.

On EC2 every process of the host reaches IMDS at 169.254.169.254, where the SDKs
look by default; here the test's IMDS has its own URL, which this unit hands to
every service systemd starts (Spark's daemons and their executors) and to login
sessions, so that no playbook or job needs to be told where it is.
"""

import os
import pathlib
import pwd
import subprocess
import time
import urllib.error
import urllib.request

SETTINGS = pathlib.Path("/etc/ec2-standin")
DEADLINE_SECONDS = 900


def metadata(base: str, path: str) -> str:
    token_request = urllib.request.Request(
        base + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    token = urllib.request.urlopen(token_request, timeout=5).read().decode()
    request = urllib.request.Request(base + path, headers={"X-aws-ec2-metadata-token": token})
    return urllib.request.urlopen(request, timeout=5).read().decode()


def wait_for_public_key(base: str) -> str:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        try:
            return metadata(base, "/latest/meta-data/public-keys/0/openssh-key")
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def print_host_keys_to_console() -> None:
    """cloud-init's block on the serial console, which EC2's GetConsoleOutput serves (moto: MOTO_CONSOLE_DIR)."""
    console = pathlib.Path("/var/lib/ec2-standin-console")
    if not console.is_dir():
        return
    keys = [path.read_text().strip() for path in sorted(pathlib.Path("/etc/ssh").glob("ssh_host_*_key.pub"))]
    block = ["-----BEGIN SSH HOST KEY KEYS-----", *keys, "-----END SSH HOST KEY KEYS-----"]
    (console / f"{os.uname().nodename}.log").write_text("cloud-init: booted\n" + "\n".join(block) + "\n")


def wait_for_setting(name: str) -> str:
    """A setting the test may write after boot (on a private network, IMDS starts once the bridge is up)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (SETTINGS / name).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {SETTINGS / name} after {DEADLINE_SECONDS} s")
        time.sleep(1)
    return (SETTINGS / name).read_text().strip()


def point_sdks_at_metadata_service(base: str) -> None:
    variable = f"AWS_EC2_METADATA_SERVICE_ENDPOINT={base}"
    subprocess.run(["systemctl", "set-environment", variable], check=True)
    with open("/etc/environment", "a") as environment:
        environment.write(variable + "\n")


def main() -> None:
    base = wait_for_setting("imds_url")
    port = (SETTINGS / "ssh_port").read_text().strip()
    listen = (SETTINGS / "ssh_listen_address").read_text().strip()
    point_sdks_at_metadata_service(base)
    if pathlib.Path("/usr/local/share/ca-certificates").is_dir():
        subprocess.run(["update-ca-certificates"], check=True, capture_output=True)
    try:
        pwd.getpwnam("ubuntu")
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "ubuntu"], check=True)
    sudoers = pathlib.Path("/etc/sudoers.d/90-cloud-init-users")
    sudoers.write_text("ubuntu ALL=(ALL) NOPASSWD:ALL\n")
    sudoers.chmod(0o440)
    subprocess.run(["ssh-keygen", "-A"], check=True, capture_output=True)
    print_host_keys_to_console()
    pathlib.Path("/etc/ssh/sshd_config.d/ec2-standin.conf").write_text(
        f"Port {port}\nListenAddress {listen}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin no\n"
    )
    user = pwd.getpwnam("ubuntu")
    ssh_dir = pathlib.Path(user.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(wait_for_public_key(base).strip() + "\n")
    keys.chmod(0o600)
    for path in (ssh_dir, keys):
        os.chown(path, user.pw_uid, user.pw_gid)


if __name__ == "__main__":
    main()
