"""fruitcloud_aws_ec2: aws_ec2 that says "no credentials" once, and fails as aws_ec2 on any other error."""

from __future__ import annotations

import subprocess

import yaml

from tests.support.ansible_helpers import BIN, REPO, ansible_env


def list_hosts(directory, credentials: dict[str, str], endpoint: str | None = None) -> subprocess.CompletedProcess:
    inventory = REPO / "inventory" / "aws_ec2.yml"
    if endpoint:
        inventory = directory / "closed.aws_ec2.yml"
        config = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
        inventory.write_text(yaml.safe_dump({**config, "endpoint_url": endpoint}))
    without_aws = {key: value for key, value in ansible_env().items() if not key.startswith("AWS_")}
    env = {
        **without_aws,
        **credentials,
        # No ~/.aws, and no instance profile to wait for: a laptop with nothing set up.
        "HOME": str(directory),
        "AWS_EC2_METADATA_DISABLED": "true",
        "ANSIBLE_LOCAL_TEMP": str(directory / "tmp"),
    }
    return subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(inventory), "--graph", "-e", "fruitcloud_bucket=some-bucket"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("[WARNING]") and "eprecation" not in line]


def test_no_credentials_is_one_warning_that_says_what_to_do(tmp_path):
    listed = list_hosts(tmp_path, {})
    assert listed.returncode == 0, listed.stderr
    assert warnings(listed.stderr) == [
        "[WARNING]: No AWS credentials found (environment, ~/.aws, instance profile): the inventory lists no EC2 "
        "host. Set AWS_PROFILE (or run `aws configure`) and run again."
    ]
    assert "Failed to parse" not in listed.stderr
    assert "spark_master" not in listed.stdout


def test_any_other_aws_error_still_fails_the_source(tmp_path):
    listed = list_hosts(
        tmp_path, {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "x"}, endpoint="http://127.0.0.1:9"
    )
    assert "Failed to describe instances: Could not connect to the endpoint URL" in listed.stderr
    assert "Unable to parse" in listed.stderr
    assert "No AWS credentials" not in listed.stderr
