"""site.yml refuses bad local inputs before provision.yml creates (and bills) anything."""

from __future__ import annotations

import boto3
import pytest
from support.ansible_helpers import localhost_inventory, run_playbook

from harness.moto import TEST_CREDENTIALS

BUCKET = "fruitcloud-preflight-test"


def aws_resources(endpoint: str) -> tuple[list[str], list[str], list[str]]:
    region = TEST_CREDENTIALS["AWS_DEFAULT_REGION"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name=region)
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
    iam = boto3.client("iam", endpoint_url=endpoint, region_name=region)
    return (
        [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"] == BUCKET],
        [i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]],
        [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith("fruitcloud")],
    )


def site_vars(endpoint: str, tmp_path, **overrides) -> dict:
    return {
        "fruitcloud_aws_endpoint_url": endpoint,
        "fruitcloud_bucket": BUCKET,
        "fruitcloud_ssh_private_key": str(tmp_path / "keys" / "fruitcloud.pem"),
        "aws_infra_ssh_cidr": "198.51.100.7/32",
        **overrides,
    }


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no_images_dir", "does not exist or is not a folder"),
        ("no_class_folders", "has no class folders"),
        ("no_images", "has class folders but no images in them"),
        ("bad_bucket", "is not an S3 bucket name"),
        ("no_key_dir", "is not a writable folder"),
        ("open_key", "exists but is not a file readable by its owner only"),
        ("missing_weights", "is not a file on the controller"),
    ],
)
def test_site_refuses_bad_local_inputs_before_creating_anything(moto_endpoint, sample_dir, tmp_path, case, expected):
    (tmp_path / "keys").mkdir()
    images = tmp_path / "images"
    (images / "Apple").mkdir(parents=True)
    (images / "Apple" / "notes.txt").write_text("not an image")
    good = {"upload_images_dir": str(sample_dir)}
    overrides = {
        "no_images_dir": {"upload_images_dir": str(tmp_path / "nowhere")},
        "no_class_folders": {"upload_images_dir": str(images / "Apple")},
        "no_images": {"upload_images_dir": str(images)},
        "bad_bucket": {**good, "fruitcloud_bucket": "My_Bucket"},
        "no_key_dir": {**good, "fruitcloud_ssh_private_key": str(tmp_path / "keys" / "open.pem" / "k.pem")},
        "open_key": {**good, "fruitcloud_ssh_private_key": str(tmp_path / "keys" / "open.pem")},
        "missing_weights": {**good, "model_weights_local_file": str(tmp_path / "w.h5")},
    }[case]
    open_key = tmp_path / "keys" / "open.pem"
    open_key.write_text("key")
    open_key.chmod(0o644)
    before = aws_resources(moto_endpoint)

    run = run_playbook("site.yml", localhost_inventory(tmp_path), site_vars(moto_endpoint, tmp_path, **overrides))

    assert run.returncode != 0
    assert expected in run.output, run.output[-3000:]
    assert "TASK [aws_infra" not in run.output
    assert aws_resources(moto_endpoint) == before


def test_a_region_given_with_e_alone_is_refused_before_any_aws_call(tmp_path):
    """The inventory would look for the hosts in another region than the one they are made in."""
    extra_vars = {"fruitcloud_aws_endpoint_url": "http://127.0.0.1:9", "fruitcloud_bucket": "fruitcloud-region-test"}
    run = run_playbook("provision.yml", localhost_inventory(tmp_path), {**extra_vars, "fruitcloud_region": "us-east-1"})
    said = " ".join(run.output.split())
    assert run.returncode != 0 and run.recap()["failed"] == 1
    assert "fruitcloud_region is us-east-1 but the inventory looks for hosts in eu-west-1" in said
    assert "export FRUITCLOUD_REGION=us-east-1" in said
    moved = run_playbook(
        "provision.yml", localhost_inventory(tmp_path), extra_vars, "--check", env={"FRUITCLOUD_REGION": "us-east-1"}
    )
    assert "fruitcloud_region is" not in moved.output, "the region from the environment is the inventory's too"


@pytest.mark.parametrize("playbook", ["provision.yml", "teardown.yml", "upload_images.yml", "power.yml", "run_job.yml"])
def test_a_playbook_without_a_bucket_name_says_how_to_give_one_before_any_aws_call(playbook, sample_dir, tmp_path):
    # Nothing listens on port 9: a call to AWS would fail with a connection error, not with this message.
    extra_vars = {"fruitcloud_aws_endpoint_url": "http://127.0.0.1:9", "upload_images_dir": str(sample_dir)}
    run = run_playbook(playbook, localhost_inventory(tmp_path), extra_vars, "-e", "fruitcloud_power=stopped")
    assert run.returncode != 0
    said = " ".join(run.output.split())
    assert 'fruitcloud_bucket "" is not an S3 bucket name: set -e fruitcloud_bucket=NAME' in said
    assert "(e.g. my-company-fruitcloud)" in said
    assert run.recap()["failed"] == 1
