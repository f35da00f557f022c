"""ec2_console_host_keys reads the host keys cloud-init prints to an EC2 instance's console."""

from __future__ import annotations

import importlib.util

from support.ansible_helpers import REPO

SPEC = importlib.util.spec_from_file_location(
    "ec2_console_host_keys", REPO / "playbooks/library/ec2_console_host_keys.py"
)
MODULE = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(MODULE)

# As an Ubuntu instance's console shows them: the fingerprints with cloud-init's "ec2:" prefix, then the keys.
CONSOLE = """[   12.3] cloud-init[612]: Cloud-init v. 24.4 finished
ec2: #############################################################
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:abc root@ip-172-31-5-9 (ECDSA)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
ec2: #############################################################
-----BEGIN SSH HOST KEY KEYS-----\r
ecdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-172-31-5-9\r
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@ip-172-31-5-9\r
-----END SSH HOST KEY KEYS-----\r
"""


def test_the_keys_block_is_read_without_comments():
    assert MODULE.host_keys(CONSOLE) == ["ecdsa-sha2-nistp256 AAAAE2VjZHNh", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"]


def test_no_complete_block_yet_is_no_key_and_a_reboot_block_replaces_the_first():
    assert MODULE.host_keys("") == []
    assert MODULE.host_keys(CONSOLE.rsplit("-----END", 1)[0]) == [], "a block still being printed is not read"
    rebooted = (
        CONSOLE + "-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAnew root@x\n-----END SSH HOST KEY KEYS-----\n"
    )
    assert MODULE.host_keys(rebooted) == ["ssh-ed25519 AAAAnew"]
