"""provision.yml / teardown.yml / the aws_ec2 inventory, checked by reading moto back with boto3."""

from __future__ import annotations

import fnmatch
import json
import subprocess

import boto3
import pytest
import yaml
from support.ansible_helpers import REPO, ansible_env, fake_ubuntu_amis, localhost_inventory, run_playbook

from harness.moto import iam_enforced, moto_server

pytestmark = pytest.mark.moto

BUCKET = "fruitcloud-provision-test"
OPERATOR_CIDR = "198.51.100.7/32"
# Everything is named after the deployment, which is the bucket unless set.
MASTER, WORKER = f"{BUCKET}-master", f"{BUCKET}-worker-1"
ROLE, GROUP = f"{BUCKET}-host", f"{BUCKET}-spark"


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
        "fruitcloud_ssh_private_key": str(directory / "keys" / "fruitcloud.pem"),
        **overrides,
    }


def allowed(policy: dict, action: str, resource: str) -> bool:
    """IAM's rule for identity policies without conditions: an explicit Deny wins, else any Allow, else denied.

    moto does not enforce IAM, so the provisioned policy is evaluated here as AWS would.
    """

    def matches(statement) -> bool:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        return any(fnmatch.fnmatchcase(action, a) for a in actions) and any(
            fnmatch.fnmatchcase(resource, r) for r in resources
        )

    effects = {s["Effect"] for s in policy["Statement"] if matches(s)}
    return "Allow" in effects and "Deny" not in effects


def list_inventory(endpoint, directory, env: dict[str, str] | None = None) -> dict:
    """The repository's aws_ec2 inventory pointed at moto, listed as a user of this deployment lists it."""
    inventory_file = directory / "test.aws_ec2.yml"
    config = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
    inventory_file.write_text(yaml.safe_dump({**config, "endpoint_url": endpoint}))
    listed = subprocess.run(
        [
            str(REPO / ".venv/bin/ansible-inventory"),
            "-i",
            str(inventory_file),
            "--list",
            "-e",
            f"fruitcloud_bucket={BUCKET}",
        ],
        env=ansible_env(env),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(listed.stdout)


def test_the_inventory_looks_in_the_region_the_playbooks_use(fresh_aws):
    """FRUITCLOUD_REGION moves the playbooks and the inventory alike; an inventory cannot read -e."""
    endpoint, directory = fresh_aws
    for region in ("eu-west-1", "us-east-1"):
        ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=region)
        tags = {
            "project": "fruitcloud",
            "deployment": BUCKET,
            "Name": f"{region}-master",
            "spark_group": "spark_master",
        }
        ec2.run_instances(
            ImageId=ec2.describe_images()["Images"][0]["ImageId"],
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )
    assert list_inventory(endpoint, directory)["spark_master"]["hosts"] == ["eu-west-1-master"]
    moved = list_inventory(endpoint, directory, {"FRUITCLOUD_REGION": "us-east-1"})
    assert moved["spark_master"]["hosts"] == ["us-east-1-master"]


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
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    rules = {rule["ID"]: rule for rule in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    tmp, noncurrent = rules["expire-tmp"], rules["expire-noncurrent"]
    assert (tmp["Expiration"]["Days"], tmp["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"]) == (7, 2)
    assert (noncurrent["Status"], noncurrent["NoncurrentVersionExpiration"]["NoncurrentDays"]) == ("Enabled", 7)

    iam = client("iam", endpoint)
    policy = iam.get_role_policy(RoleName=ROLE, PolicyName=f"{BUCKET}-s3")["PolicyDocument"]
    bucket, objects = f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/"
    expected = {
        ("s3:ListBucket", bucket): True,
        ("s3:ListBucketMultipartUploads", bucket): True,
        ("s3:GetObject", objects + "images/Apple/1.jpg"): True,
        ("s3:GetObject", objects + "runs/r1/manifest.json"): True,
        ("s3:PutObject", objects + "runs/r1/features/part-0.parquet"): True,
        ("s3:DeleteObject", objects + "runs/r1/_lock"): True,
        ("s3:AbortMultipartUpload", objects + "runs/r1/features/part-0.parquet"): True,
        ("s3:ListMultipartUploadParts", objects + "runs/r1/features/part-0.parquet"): True,
        # The hosts can neither delete nor replace an input image, nor touch other prefixes or buckets.
        ("s3:DeleteObject", objects + "images/Apple/1.jpg"): False,
        ("s3:PutObject", objects + "images/Apple/1.jpg"): False,
        ("s3:GetObject", objects + "private/notes.txt"): False,
        ("s3:PutObject", objects + "imagesX/1.jpg"): False,
        ("s3:DeleteBucket", bucket): False,
        ("s3:PutBucketPolicy", bucket): False,
        ("s3:GetObject", "arn:aws:s3:::another-bucket/images/1.jpg"): False,
        ("s3:DeleteObjectVersion", objects + "runs/r1/manifest.json"): False,
    }
    assert {case: allowed(policy, *case) for case in expected} == expected
    assert iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"] == []
    profile = iam.get_instance_profile(InstanceProfileName=ROLE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [ROLE]

    ec2 = client("ec2", endpoint)
    [group] = ec2.describe_security_groups(GroupNames=[GROUP])["SecurityGroups"]
    ingress = {(p["IpProtocol"], p.get("FromPort")): p for p in group["IpPermissions"]}
    assert [r["CidrIp"] for r in ingress[("tcp", 22)]["IpRanges"]] == [OPERATOR_CIDR]
    assert ingress[("tcp", 22)]["Ipv6Ranges"] == []

    cloudwatch = client("cloudwatch", endpoint)
    alarms = {a["AlarmName"]: a for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"{BUCKET}-")["MetricAlarms"]}
    assert sorted(alarms) == [f"{MASTER}-idle-stop", f"{WORKER}-idle-stop"]
    idle = alarms[f"{MASTER}-idle-stop"]
    assert (idle["Namespace"], idle["MetricName"], idle["Statistic"], idle["ComparisonOperator"]) == (
        "AWS/EC2",
        "CPUUtilization",
        "Average",
        "LessThanThreshold",
    )
    assert (idle["Threshold"], idle["Period"], idle["EvaluationPeriods"]) == (5.0, 300, 12), "60 min under 5 %"
    assert idle["AlarmActions"] == ["arn:aws:automate:eu-west-1:ec2:stop"]
    assert [g["GroupId"] for g in ingress[("-1", None)]["UserIdGroupPairs"]] == [group["GroupId"]]
    assert set(ingress) == {("tcp", 22), ("-1", None)}, "no Jupyter or other port open"

    reservations = ec2.describe_instances(Filters=[{"Name": "tag:project", "Values": ["fruitcloud"]}])["Reservations"]
    instances = {
        next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i for r in reservations for i in r["Instances"]
    }
    assert set(instances) == {MASTER, WORKER}
    master = instances[MASTER]
    assert master["InstanceType"] == "t2.medium"
    assert master["ImageId"] == "ami-0c2" + "0" * 14, "newest noble image"
    assert master["MetadataOptions"]["HttpTokens"] == "required"
    assert master["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{ROLE}")
    assert master["KeyName"] == BUCKET
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

    groups = list_inventory(endpoint, directory)
    assert groups["spark_master"]["hosts"] == [MASTER]
    assert groups["spark_workers"]["hosts"] == [WORKER]
    assert sorted(groups["spark"]["hosts"]) == [MASTER, WORKER]
    # ansible-inventory marks values read from AWS as unsafe (not templated).
    alias = groups["_meta"]["hostvars"][MASTER]["fruitcloud_host_key_alias"]
    assert alias == {"__ansible_unsafe": master["InstanceId"]}

    known_hosts = directory / "known_hosts"
    known_hosts.write_text("[203.0.113.9]:22 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7\n")
    down = run_playbook(
        "teardown.yml",
        inventory,
        {
            "fruitcloud_aws_endpoint_url": endpoint,
            "fruitcloud_bucket": BUCKET,
            "fruitcloud_known_hosts_file": str(known_hosts),
        },
    )
    assert down.returncode == 0, down.output[-4000:]
    assert not known_hosts.exists(), "teardown forgets the host keys of the terminated hosts"
    states = {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states == {"terminated"}
    assert [g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]] == ["default"]
    assert ec2.describe_key_pairs()["KeyPairs"] == []
    assert iam.list_roles()["Roles"] == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [BUCKET], "bucket kept unless asked"
    assert client("cloudwatch", endpoint).describe_alarms()["MetricAlarms"] == []

    again = run_playbook(
        "teardown.yml",
        inventory,
        {"fruitcloud_aws_endpoint_url": endpoint, "fruitcloud_bucket": BUCKET, "teardown_bucket": True},
    )
    assert again.returncode == 0, again.output[-4000:]
    assert s3.list_buckets()["Buckets"] == []


@pytest.mark.parametrize("release", ["22.04", "24.04"])
def test_ubuntu_release_selects_the_matching_image(fresh_aws, release):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory, aws_infra_ubuntu_release=release),
    )
    assert run.returncode == 0, run.output[-4000:]
    [reservation] = client("ec2", endpoint).describe_instances()["Reservations"]
    assert reservation["Instances"][0]["ImageId"] == {"22.04": "ami-0b2", "24.04": "ami-0c2"}[release] + "0" * 14


def refused_before_any_change(run, endpoint, message: str) -> None:
    assert run.returncode != 0
    assert message in " ".join(run.output.split()), run.output[-3000:]
    assert client("s3", endpoint).list_buckets()["Buckets"] == []
    assert client("ec2", endpoint).describe_key_pairs()["KeyPairs"] == []


def test_ubuntu_1804_is_refused_before_any_change(fresh_aws):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory),
        "-e",
        "aws_infra_ubuntu_release=18.04",
    )
    refused_before_any_change(run, endpoint, "Ubuntu 18.04 cannot be managed by this project's Ansible")


def test_an_image_lookup_that_finds_nothing_says_what_was_looked_for(fresh_aws):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory, aws_infra_ubuntu_release="20.04"),
    )
    assert run.returncode != 0
    assert (
        "no available x86_64 image named ubuntu/images/hvm-ssd/ubuntu-focal-20.04-amd64-server-* owned by "
        "099720109477 (Canonical) in eu-west-1" in " ".join(run.output.split())
    ), run.output[-3000:]
    assert client("ec2", endpoint).describe_instances()["Reservations"] == []


@pytest.mark.parametrize(
    ("cidr", "message", "options"),
    [
        ("0.0.0.0/0", "prefixes wider than /16 are refused (0.0.0.0/0 included)", []),
        ("203.0.113.7/0", "has bits set past its prefix; it means 0.0.0.0/0", []),
        ("0.0.0.0/00", "prefixes wider than /16 are refused", []),
        ("10.0.0.0/1", "has bits set past its prefix; it means 0.0.0.0/1", []),
        ("128.0.0.0/1", "prefixes wider than /16 are refused", []),
        ("::/0", "prefixes wider than /48 are refused", []),
        ("203.0.113.7", "must be your public address as a CIDR block", []),
        ("not-a-cidr", "must be your public address as a CIDR block", []),
        ("203.0.113.7/33", "must be your public address as a CIDR block", []),
        (
            "203.0.113.7/255.255.255.255",
            "gives a netmask after the slash; write the prefix length instead: 203.0.113.7/32",
            [],
        ),
        (
            "0.0.0.0/0",
            "aws_infra_ssh_min_prefix_ipv4 must be a prefix length from 1 to 32, got 0",
            ["-e", "aws_infra_ssh_min_prefix_ipv4=0"],
        ),
        (
            "2001:db8::/32",
            "argument 'aws_infra_ssh_min_prefix_ipv6' is of type str and we were unable to convert to int",
            ["-e", "aws_infra_ssh_min_prefix_ipv6=wide"],
        ),
    ],
)
def test_wide_or_invalid_ssh_cidr_is_refused_before_any_aws_call(fresh_aws, cidr, message, options):
    endpoint, directory = fresh_aws
    # Typed as on a command line: -e strings, switches included.
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory),
        "-e",
        f"aws_infra_ssh_cidr={cidr}",
        "-e",
        "aws_infra_allow_ssh_from_anywhere=false",
        *options,
    )
    refused_before_any_change(run, endpoint, message)


@pytest.mark.parametrize(
    ("images", "runs"),
    [("images", "runs/"), ("images/", ""), ("data/", "data/runs/"), ("/images/", "runs/"), ("images/", "images/")],
)
def test_prefixes_that_would_widen_the_host_policy_are_refused_before_any_aws_call(fresh_aws, images, runs):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(endpoint, directory, fruitcloud_images_prefix=images, fruitcloud_runs_prefix=runs),
    )
    refused_before_any_change(
        run, endpoint, f'the images prefix ("{images}") and the runs prefix ("{runs}") must each be non-empty'
    )


def test_cost_guard_spot_hosts_and_a_new_operator_ip(fresh_aws):
    """Budget alarm and e-mail topic, spot hosts through a launch template, the SSH rule replaced, stop."""
    endpoint, directory = fresh_aws
    inventory = localhost_inventory(directory)
    options = provision_vars(
        endpoint,
        directory,
        aws_infra_market="spot",
        aws_infra_alarm_email="ops@example.com",
        aws_infra_monthly_budget_usd=10,
        aws_infra_idle_minutes=90,
    )
    first = run_playbook("provision.yml", inventory, options)
    assert first.returncode == 0, first.output[-4000:]
    assert "idle guard: each host stops after 90 min under 5 % CPU" in first.output

    topics = client("sns", endpoint).list_topics()["Topics"]
    [topic] = [t["TopicArn"] for t in topics if t["TopicArn"].endswith(f":{BUCKET}-alarms")]
    [subscription] = client("sns", endpoint).list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", "ops@example.com")
    [idle] = client("cloudwatch", endpoint).describe_alarms(AlarmNamePrefix=f"{BUCKET}-")["MetricAlarms"]
    assert (idle["EvaluationPeriods"], idle["AlarmActions"]) == (18, ["arn:aws:automate:eu-west-1:ec2:stop", topic])
    billing = boto3.client("cloudwatch", endpoint_url=endpoint, region_name="us-east-1")
    [budget] = billing.describe_alarms(AlarmNames=[f"{BUCKET}-monthly-charges"])["MetricAlarms"]
    assert (budget["Namespace"], budget["MetricName"], budget["Threshold"]) == ("AWS/Billing", "EstimatedCharges", 10.0)
    # An alarm notifies topics of its own region: the billing alarm's topic is in us-east-1, with the e-mail too.
    billing_sns = boto3.client("sns", endpoint_url=endpoint, region_name="us-east-1")
    [billing_topic] = [t["TopicArn"] for t in billing_sns.list_topics()["Topics"] if t["TopicArn"].endswith("-alarms")]
    assert billing_topic.startswith("arn:aws:sns:us-east-1:")
    [billing_subscription] = billing_sns.list_subscriptions_by_topic(TopicArn=billing_topic)["Subscriptions"]
    assert billing_subscription["Endpoint"] == "ops@example.com"
    assert (budget["Dimensions"], budget["AlarmActions"]) == ([{"Name": "Currency", "Value": "USD"}], [billing_topic])

    ec2 = client("ec2", endpoint)
    [template] = ec2.describe_launch_templates(LaunchTemplateNames=[f"{BUCKET}-spot"])["LaunchTemplates"]
    [version] = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
        "LaunchTemplateVersions"
    ]
    assert version["LaunchTemplateData"]["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"},
    }

    again = run_playbook("provision.yml", inventory, options)
    assert again.returncode == 0 and again.recap()["changed"] == 0, again.output[-4000:]

    moved = run_playbook("provision.yml", inventory, {**options, "aws_infra_ssh_cidr": "203.0.113.9/32"})
    assert moved.returncode == 0, moved.output[-4000:]
    [group] = ec2.describe_security_groups(GroupNames=[GROUP])["SecurityGroups"]
    [ssh_rule] = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert [r["CidrIp"] for r in ssh_rule["IpRanges"]] == ["203.0.113.9/32"], "the old operator IP is gone"

    stopped = run_playbook("power.yml", inventory, {**options, "fruitcloud_power": "stopped"})
    assert stopped.returncode == 0, stopped.output[-4000:]
    states = {i["State"]["Name"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    assert states == {"stopped"}

    down = run_playbook("teardown.yml", inventory, options)
    assert down.returncode == 0, down.output[-4000:]
    assert client("cloudwatch", endpoint).describe_alarms()["MetricAlarms"] == []
    assert billing.describe_alarms()["MetricAlarms"] == []
    assert not [t for t in client("sns", endpoint).list_topics()["Topics"] if "fruitcloud" in t["TopicArn"]]
    assert not [t for t in billing_sns.list_topics()["Topics"] if "fruitcloud" in t["TopicArn"]]
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []


def test_switches_typed_on_the_command_line_take_effect(fresh_aws):
    """-e name=false is the string "false"; each switch must still read as false, and an IPv6 block works as typed."""
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        {k: v for k, v in provision_vars(endpoint, directory).items() if k != "aws_infra_wait_for_ssh"},
        "-e",
        "aws_infra_ssh_cidr=2001:DB8::7/128",
        "-e",
        "aws_infra_bucket_require_tls=false",
        "-e",
        "aws_infra_bucket_versioning=false",
        "-e",
        "aws_infra_wait_for_ssh=false",
        "-e",
        "aws_infra_allow_ssh_from_anywhere=false",
        "-e",
        "aws_infra_spark_worker_count=1",
    )
    assert run.returncode == 0, run.output[-4000:]
    s3 = client("s3", endpoint)
    with pytest.raises(s3.exceptions.ClientError, match="NoSuchBucketPolicy"):
        s3.get_bucket_policy(Bucket=BUCKET)
    assert s3.get_bucket_versioning(Bucket=BUCKET).get("Status") in (None, "Suspended")
    ec2 = client("ec2", endpoint)
    [group] = ec2.describe_security_groups(GroupNames=[GROUP])["SecurityGroups"]
    [ssh_rule] = [p for p in group["IpPermissions"] if p.get("FromPort") == 22]
    assert ([r["CidrIpv6"] for r in ssh_rule["Ipv6Ranges"]], ssh_rule["IpRanges"]) == (["2001:db8::7/128"], [])
    assert len(ec2.describe_instances()["Reservations"]) == 2


def test_check_mode_on_an_empty_account_changes_nothing(fresh_aws):
    endpoint, directory = fresh_aws
    run = run_playbook(
        "provision.yml",
        localhost_inventory(directory),
        provision_vars(
            endpoint,
            directory,
            aws_infra_spark_worker_count=1,
            fruitcloud_ssh_private_key=str(directory / "check" / "k.pem"),
        ),
        "--check",
    )
    assert run.returncode == 0, run.output[-4000:]
    assert run.recap()["changed"] > 0, "--check says what it would create"
    assert client("s3", endpoint).list_buckets()["Buckets"] == []
    assert client("iam", endpoint).list_roles()["Roles"] == []
    assert client("ec2", endpoint).describe_key_pairs()["KeyPairs"] == []
    assert client("ec2", endpoint).describe_instances()["Reservations"] == []
    assert not (directory / "check").exists()


def running_names(ec2) -> dict[str, str]:
    """Name tag -> state of every instance that is not terminated."""
    return {
        next((t["Value"] for t in i.get("Tags", []) if t["Key"] == "Name"), i["InstanceId"]): i["State"]["Name"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    }


def test_a_deployment_acts_on_its_own_resources_only(fresh_aws):
    """Two deployments of the project in one account, plus an instance and alarms that neither made."""
    endpoint, directory = fresh_aws
    inventory = localhost_inventory(directory)
    ec2, cloudwatch = client("ec2", endpoint), client("cloudwatch", endpoint)
    ec2.run_instances(
        ImageId="ami-0c2" + "0" * 14,
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "project", "Value": "fruitcloud"}, {"Key": "Name", "Value": "by-hand"}],
            }
        ],
    )
    for name in ("fruitcloud-prod-x", f"{BUCKET}-prod-x"):
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            MetricName="CPUUtilization",
            Namespace="AWS/EC2",
            Statistic="Average",
            Period=300,
            EvaluationPeriods=1,
            Threshold=1.0,
            ComparisonOperator="LessThanThreshold",
        )
    staging = "fruitcloud-staging-test"
    other = run_playbook(
        "provision.yml",
        inventory,
        provision_vars(endpoint, directory, fruitcloud_bucket=staging, aws_infra_spark_worker_count=1)
        | {"fruitcloud_ssh_private_key": str(directory / "keys" / "staging.pem")},
    )
    assert other.returncode == 0, other.output[-4000:]
    ours = run_playbook("provision.yml", inventory, provision_vars(endpoint, directory))
    assert ours.returncode == 0, ours.output[-4000:]
    not_ours = {"by-hand": "running", f"{staging}-master": "running", f"{staging}-worker-1": "running"}
    assert running_names(ec2) == not_ours | {MASTER: "running"}, "the other deployment's worker is not surplus here"

    groups = list_inventory(endpoint, directory)
    assert (groups["spark"]["hosts"], groups["spark_master"]["hosts"]) == ([MASTER], [MASTER])
    assert "spark_workers" not in groups

    stopped = run_playbook(
        "power.yml", inventory, provision_vars(endpoint, directory) | {"fruitcloud_power": "stopped"}
    )
    assert stopped.returncode == 0, stopped.output[-4000:]
    assert running_names(ec2) == not_ours | {MASTER: "stopped"}

    down = run_playbook("teardown.yml", inventory, provision_vars(endpoint, directory))
    assert down.returncode == 0, down.output[-4000:]
    assert running_names(ec2) == not_ours
    left = {a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]}
    assert left == {
        "fruitcloud-prod-x",
        f"{BUCKET}-prod-x",
        f"{staging}-master-idle-stop",
        f"{staging}-worker-1-idle-stop",
    }
    assert [r["RoleName"] for r in client("iam", endpoint).list_roles()["Roles"]] == [f"{staging}-host"]
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]] == [staging]
    report = " ".join(down.output.replace("'", "").split())
    assert "left alone, tagged project=fruitcloud but not deployment=fruitcloud-provision-test: instances" in report
    assert (
        f"(named [by-hand, {staging}-master, {staging}-worker-1], of deployments [none, {staging}, {staging}])"
        in report
    )
    assert f"not one of its alarms: [{BUCKET}-prod-x]" in report


def test_provision_refuses_to_take_over_what_it_did_not_create(fresh_aws):
    endpoint, directory = fresh_aws
    inventory = localhost_inventory(directory)
    iam, ec2, s3 = client("iam", endpoint), client("ec2", endpoint), client("s3", endpoint)
    iam.create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
    document = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"}]}
    managed = iam.create_policy(PolicyName="their-reads", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=managed)
    theirs = ec2.create_key_pair(KeyName=BUCKET, KeyType="rsa")["KeyFingerprint"]
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    their_statement = {
        "Sid": "AnalyticsReads",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{BUCKET}/reports/*",
    }
    s3.put_bucket_policy(Bucket=BUCKET, Policy=json.dumps({"Version": "2012-10-17", "Statement": [their_statement]}))

    refused = run_playbook("provision.yml", inventory, provision_vars(endpoint, directory))
    assert refused.returncode != 0
    message = " ".join(refused.output.split())
    assert f"deployment {BUCKET} would take over what it did not create: IAM role {ROLE}" in message, message[-3000:]
    assert (
        f"key pair {BUCKET}" in message and "bucket policy of fruitcloud-provision-test with 1 statement(s)" in message
    )
    assert "-e aws_infra_adopt_existing=true" in message
    assert [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=ROLE)["AttachedPolicies"]] == [
        "their-reads"
    ]
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == []
    assert json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"] == [their_statement]
    assert ec2.describe_instances()["Reservations"] == []

    adopted = run_playbook(
        "provision.yml", inventory, provision_vars(endpoint, directory, aws_infra_adopt_existing=True)
    )
    assert adopted.returncode == 0, adopted.output[-4000:]
    statements = json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]
    assert [s["Sid"] for s in statements] == ["AnalyticsReads", "DenyInsecureTransport"]
    [key] = ec2.describe_key_pairs(KeyNames=[BUCKET])["KeyPairs"]
    assert (key["KeyFingerprint"], key["KeyType"]) == (theirs, "rsa"), "an adopted key pair is used, never replaced"
    assert iam.list_role_policies(RoleName=ROLE)["PolicyNames"] == [f"{BUCKET}-s3"]


def operator_policy(deployment: str = BUCKET) -> dict:
    """docs/operator-policy.json for this deployment (named after its bucket), as docs/aws.md says to fill it in."""
    text = (REPO / "docs" / "operator-policy.json").read_text()
    return json.loads(text.replace("${BUCKET}", BUCKET).replace("${DEPLOYMENT}", deployment))


def as_moto_checks(policy: dict, dropped: str | None = None) -> dict:
    """The policy as moto can enforce it: moto checks IAM and EC2 actions against the resource "*" only and names
    CloudWatch's actions "monitoring:"; S3 it checks with the real ARNs. ``dropped`` is removed, as a control."""
    statements = []
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else list(statement["Action"])
        actions = [action for action in actions if action != dropped]
        actions += [
            action.replace("cloudwatch:", "monitoring:") for action in actions if action.startswith("cloudwatch:")
        ]
        resource = statement["Resource"] if any(a.startswith("s3:") for a in actions) else "*"
        statements.append({**statement, "Action": actions, "Resource": resource})
    return {**policy, "Statement": statements}


def test_the_operator_policy_in_the_docs_is_enough_to_provision_and_tear_down(fresh_aws):
    """docs/aws.md's operator policy under moto's IAM enforcement: provision (alarms, e-mail and budget topics
    included) and teardown pass; without RunInstances provision fails, so the enforcement is real."""
    endpoint, directory = fresh_aws
    inventory = localhost_inventory(directory)
    options = provision_vars(
        endpoint, directory, aws_infra_alarm_email="ops@example.com", aws_infra_monthly_budget_usd=10
    )
    policy = operator_policy()
    with iam_enforced(endpoint, as_moto_checks(policy, dropped="ec2:RunInstances"), BUCKET, "operator-0") as keys:
        denied = run_playbook("provision.yml", inventory, options, env=keys)
    with iam_enforced(endpoint, as_moto_checks(policy), BUCKET, "operator") as keys:
        up = run_playbook("provision.yml", inventory, options, env=keys)
        down = run_playbook("teardown.yml", inventory, {**options, "teardown_bucket": True}, env=keys)
    assert denied.returncode != 0 and "AccessDenied) when calling the RunInstances operation" in denied.output
    assert up.returncode == 0, up.output[-4000:]
    assert down.returncode == 0, down.output[-4000:]
    assert (
        client("ec2", endpoint).describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["running", "pending", "stopped"]}]
        )["Reservations"]
        == []
    )
    # What moto cannot check, evaluated as AWS would: the IAM grants reach this deployment's role and profile only.
    account = "123456789012"
    for action, resource in [
        ("iam:CreateRole", f"arn:aws:iam::{account}:role/{BUCKET}-host"),
        ("iam:PassRole", f"arn:aws:iam::{account}:role/{BUCKET}-host"),
        ("iam:AddRoleToInstanceProfile", f"arn:aws:iam::{account}:instance-profile/{BUCKET}-host"),
        ("s3:PutBucketPolicy", f"arn:aws:s3:::{BUCKET}"),
        ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/images/Apple/1.jpg"),
    ]:
        assert allowed(policy, action, resource), (action, resource)
    for action, resource in [
        ("iam:PutRolePolicy", f"arn:aws:iam::{account}:role/Administrator"),
        ("iam:PassRole", f"arn:aws:iam::{account}:role/other-deployment-host"),
        ("s3:DeleteBucket", "arn:aws:s3:::someone-elses-bucket"),
        ("s3:GetObject", "arn:aws:s3:::someone-elses-bucket/secret.csv"),
    ]:
        assert not allowed(policy, action, resource), (action, resource)
