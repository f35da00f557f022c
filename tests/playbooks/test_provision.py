"""provision.yml / teardown.yml / the aws_ec2 inventory, checked by reading moto back with boto3."""

from __future__ import annotations

import json
import subprocess

import boto3
import pytest
import yaml
from ansible_helpers import REPO, ansible_env, fake_ubuntu_amis, localhost_inventory, run_playbook
from motoserver import moto_server

BUCKET = "fruitcloud-provision-test"
OPERATOR_CIDR = "198.51.100.7/32"


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    directory = tmp_path_factory.mktemp("aws")
    amis = directory / "amis.json"
    amis.write_text(json.dumps(fake_ubuntu_amis()))
    with moto_server(extra_env={"MOTO_AMIS_PATH": str(amis)}) as endpoint:
        yield endpoint, directory


@pytest.fixture
def fresh_aws(aws):
    endpoint, directory = aws
    subprocess.run(["curl", "-s", "-X", "POST", f"{endpoint}/moto-api/reset"], check=True)
    return endpoint, directory


def client(service, endpoint):
    return boto3.client(service, endpoint_url=endpoint, region_name="eu-west-1")


def provision_vars(endpoint, directory, **overrides):
    return {
        "fruitcloud_aws_endpoint_url": endpoint,
        "fruitcloud_bucket": BUCKET,
        "aws_infra_ssh_cidr": OPERATOR_CIDR,
        "aws_infra_wait_for_ssh": False,
        "aws_infra_private_key_path": str(directory / "keys" / "fruitcloud.pem"),
        **overrides,
    }


def test_provision_creates_everything_with_the_right_properties(fresh_aws):
    endpoint, directory = fresh_aws
    inventory = localhost_inventory(directory)
    first = run_playbook(
        "provision.yml", inventory, provision_vars(endpoint, directory, aws_infra_spark_worker_count=1)
    )
    assert first.returncode == 0, first.output[-4000:]
    assert first.recap()["changed"] > 0
    assert "total while running: $0.1" in first.output  # two t2.medium + 60 GB gp3

    s3 = client("s3", endpoint)
    encryption = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert encryption["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    [deny] = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]
    assert (deny["Effect"], deny["Condition"]) == ("Deny", {"Bool": {"aws:SecureTransport": "false"}})
    assert {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"]}["project"] == "fruitcloud"
    [rule] = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert (rule["Expiration"]["Days"], rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]) == (7, 2)

    iam = client("iam", endpoint)
    document = iam.get_role_policy(RoleName="fruitcloud-host", PolicyName="fruitcloud-s3")["PolicyDocument"]
    statements = {s["Sid"]: (s["Action"], s["Resource"]) for s in document["Statement"]}
    assert statements == {
        "ListTheBucket": (["s3:ListBucket"], [f"arn:aws:s3:::{BUCKET}"]),
        "ReadWriteItsObjects": (["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [f"arn:aws:s3:::{BUCKET}/*"]),
    }
    assert iam.list_attached_role_policies(RoleName="fruitcloud-host")["AttachedPolicies"] == []
    profile = iam.get_instance_profile(InstanceProfileName="fruitcloud-host")["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == ["fruitcloud-host"]

    ec2 = client("ec2", endpoint)
    [group] = ec2.describe_security_groups(GroupNames=["fruitcloud-spark"])["SecurityGroups"]
    ingress = {(p["IpProtocol"], p.get("FromPort")): p for p in group["IpPermissions"]}
    assert [r["CidrIp"] for r in ingress[("tcp", 22)]["IpRanges"]] == [OPERATOR_CIDR]
    assert [g["GroupId"] for g in ingress[("-1", None)]["UserIdGroupPairs"]] == [group["GroupId"]]
    assert set(ingress) == {("tcp", 22), ("-1", None)}, "no Jupyter or other port open"

    reservations = ec2.describe_instances(Filters=[{"Name": "tag:project", "Values": ["fruitcloud"]}])["Reservations"]
    instances = {
        next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i for r in reservations for i in r["Instances"]
    }
    assert set(instances) == {"fruitcloud-master", "fruitcloud-worker-1"}
    master = instances["fruitcloud-master"]
    assert master["InstanceType"] == "t2.medium"
    assert master["ImageId"] == "ami-0c2" + "0" * 14, "newest noble image"
    assert master["MetadataOptions"]["HttpTokens"] == "required"
    assert master["IamInstanceProfile"]["Arn"].endswith("instance-profile/fruitcloud-host")
    assert master["KeyName"] == "fruitcloud"
    [volume] = ec2.describe_volumes(VolumeIds=[master["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]])["Volumes"]
    assert (volume["VolumeType"], volume["Size"], volume["Encrypted"]) == ("gp3", 30, True)
    key_file = directory / "keys" / "fruitcloud.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600

    second = run_playbook(
        "provision.yml", inventory, provision_vars(endpoint, directory, aws_infra_spark_worker_count=1)
    )
    assert second.returncode == 0, second.output[-4000:]
    assert second.recap()["changed"] == 0, second.output[-4000:]
    check = run_playbook(
        "provision.yml", inventory, provision_vars(endpoint, directory, aws_infra_spark_worker_count=1), "--check"
    )
    assert check.returncode == 0, check.output[-4000:]
    assert check.recap()["changed"] == 0, check.output[-4000:]

    inventory_file = directory / "test.aws_ec2.yml"
    config = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
    inventory_file.write_text(yaml.safe_dump({**config, "endpoint_url": endpoint}))
    listed = subprocess.run(
        [str(REPO / ".venv/bin/ansible-inventory"), "-i", str(inventory_file), "--list"],
        env=ansible_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    groups = json.loads(listed.stdout)
    assert groups["spark_master"]["hosts"] == ["fruitcloud-master"]
    assert groups["spark_workers"]["hosts"] == ["fruitcloud-worker-1"]
    assert sorted(groups["spark"]["hosts"]) == ["fruitcloud-master", "fruitcloud-worker-1"]

    down = run_playbook(
        "teardown.yml", inventory, {"fruitcloud_aws_endpoint_url": endpoint, "fruitcloud_bucket": BUCKET}
    )
    assert down.returncode == 0, down.output[-4000:]
    states = {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states == {"terminated"}
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert iam.list_roles()["Roles"] == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET], "bucket kept unless asked"

    again = run_playbook(
        "teardown.yml",
        inventory,
        {"fruitcloud_aws_endpoint_url": endpoint, "fruitcloud_bucket": BUCKET, "teardown_bucket": True},
    )
    assert again.returncode == 0, again.output[-4000:]
    assert s3.list_buckets()["Buckets"] == []


@pytest.mark.parametrize("release", ["18.04", "22.04"])
def test_ubuntu_release_selects_the_matching_image(fresh_aws, release):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory, aws_infra_ubuntu_release=release),
    )
    assert run.returncode == 0, run.output[-4000:]
    [reservation] = client("ec2", endpoint).describe_instances()["Reservations"]
    assert reservation["Instances"][0]["ImageId"] == {"18.04": "ami-0a2", "22.04": "ami-0b2"}[release] + "0" * 14


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "not-a-cidr"])
def test_open_or_invalid_ssh_cidr_is_refused_before_any_change(fresh_aws, cidr):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml", localhost_inventory(directory), provision_vars(endpoint, directory, aws_infra_ssh_cidr=cidr)
    )
    assert run.returncode != 0
    assert "0.0.0.0/0 is refused unless aws_infra_allow_ssh_from_anywhere=true" in run.output
    assert client("s3", endpoint).list_buckets()["Buckets"] == []
