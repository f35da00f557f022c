"""An EC2 instance metadata service (IMDSv2) on 127.0.0.1 backed by moto.

On EC2 the job gets its credentials from the instance profile through IMDS; no
key is ever written on the host. To test that path without EC2, this server
answers the IMDS calls that boto3 and the AWS Java SDK (s3a) make, with
temporary credentials from moto's STS for the provisioned role. The clients are
pointed at it by AWS_EC2_METADATA_SERVICE_ENDPOINT, which both SDKs read.

It also serves the public key of the instance's key pair, read from moto's EC2
(404 until provision.yml has created it), which the EC2 stand-in's first-boot
unit installs for `ubuntu`, as cloud-init does on EC2.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler

import boto3

from harness.loopback import serve_on_loopback

CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"
TOKEN = "fake-imds-session-token"


PUBLIC_KEY_PATH = "/latest/meta-data/public-keys/0/openssh-key"


def make_handler(role_name: str, assume_role, region: str, public_key, instance):
    class MetadataHandler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self):
            if self.path == "/latest/api/token":
                self.reply(200, TOKEN)
            else:
                self.reply(404, "")

        def do_GET(self):
            # IMDSv2 only, as provision.yml requires (HttpTokens=required).
            if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
                self.reply(401, "")
            elif self.path.rstrip("/") == CREDENTIALS_PATH.rstrip("/"):
                self.reply(200, role_name)
            elif self.path == CREDENTIALS_PATH + role_name:
                self.reply(200, json.dumps(assume_role()), "application/json")
            elif self.path == PUBLIC_KEY_PATH:
                key = public_key()
                self.reply(200, key) if key else self.reply(404, "")
            elif self.path == "/latest/meta-data/placement/region":
                self.reply(200, region)
            elif self.path in ("/latest/meta-data/instance-id", "/latest/meta-data/instance-type"):
                found = instance()
                field = "InstanceId" if self.path.endswith("-id") else "InstanceType"
                self.reply(200, found[field]) if found else self.reply(404, "")
            elif self.path == "/latest/dynamic/instance-identity/document":
                self.reply(200, json.dumps({"region": region}), "application/json")
            else:
                self.reply(404, "")

    return MetadataHandler


@contextmanager
def fake_imds(
    moto_endpoint: str,
    role_name: str,
    key_name: str = "fruitcloud",
    region: str = "eu-west-1",
    instance_name: str | None = None,
    address: str = "127.0.0.1",
):
    """Serve IMDS on a free port of ``address``; yield its URL and the access key ids it handed out.

    One host's IMDS: the running instance launched with ``key_name`` (and named ``instance_name``, for the
    hosts of a cluster, which share the key pair).
    """
    sts = boto3.client("sts", endpoint_url=moto_endpoint, region_name=region)
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=region)
    account = sts.get_caller_identity()["Account"]
    issued: list[str] = []

    def assume_role() -> dict:
        credentials = sts.assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{role_name}", RoleSessionName="fruitcloud-instance"
        )["Credentials"]
        issued.append(credentials["AccessKeyId"])
        now = datetime.now(timezone.utc)
        return {
            "Code": "Success",
            "LastUpdated": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Type": "AWS-HMAC",
            "AccessKeyId": credentials["AccessKeyId"],
            "SecretAccessKey": credentials["SecretAccessKey"],
            "Token": credentials["SessionToken"],
            "Expiration": (now + timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def public_key() -> str | None:
        pairs = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [key_name]}], IncludePublicKey=True)
        return pairs["KeyPairs"][0].get("PublicKey") if pairs["KeyPairs"] else None

    def instance() -> dict | None:
        """The running instance launched with the key pair: the host this stand-in serves."""
        filters = [{"Name": "key-name", "Values": [key_name]}, {"Name": "instance-state-name", "Values": ["running"]}]
        if instance_name is not None:
            filters.append({"Name": "tag:Name", "Values": [instance_name]})
        found = [i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]
        return found[0] if found else None

    with serve_on_loopback(make_handler(role_name, assume_role, region, public_key, instance), address) as url:
        yield url, issued
