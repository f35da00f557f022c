"""Run a moto S3/IAM/EC2 server on 127.0.0.1 for tests and the demo (stand-in for AWS)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# moto accepts any keys; these are its documented dummies, never real credentials.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "eu-west-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def moto_command() -> list[str]:
    """moto_server, answering as AWS where harness.moto_as_aws says it does not."""
    return [sys.executable, "-m", "harness.moto_as_aws"]


@contextmanager
def moto_server(
    port: int | None = None,
    extra_env: dict[str, str] | None = None,
    log_path: Path | None = None,
    address: str = "127.0.0.1",
):
    """Start moto_server on ``address``, yield its endpoint URL, and stop it even on failure."""
    port = port or free_port()
    endpoint = f"http://{address}:{port}"
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 - outlives this statement
    process = subprocess.Popen(
        [*moto_command(), "-H", address, "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO), **TEST_CREDENTIALS, **(extra_env or {})},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        if log_path:
            log.close()


HOST_POLICY_TEMPLATE = REPO / "roles" / "aws_infra" / "templates" / "host_policy.json.j2"


# Two places where moto's IAM checks differ from AWS's, and the statements that make moto
# accept what AWS accepts: moto checks HeadBucket as its own action (AWS: s3:ListBucket),
# and DeleteObjects as s3:DeleteObject on the *bucket* (AWS: on each key). Each is granted
# only when the policy grants what AWS checks, so a policy without it is denied as on AWS.
# With the second, moto checks the keys of a DeleteObjects against the bucket policy only;
# single DELETEs stay checked.
def moto_quirks(bucket: str, policy: dict) -> list[dict]:
    arn = f"arn:aws:s3:::{bucket}"
    granted = {
        action
        for statement in policy["Statement"]
        if statement["Effect"] == "Allow"
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    quirks = []
    if "s3:ListBucket" in granted:
        quirks.append({"Sid": "MotoHeadBucket", "Effect": "Allow", "Action": "s3:HeadBucket", "Resource": arn})
    if "s3:DeleteObject" in granted:
        quirks.append({"Sid": "MotoDeleteObjects", "Effect": "Allow", "Action": "s3:DeleteObject", "Resource": arn})
    return quirks


def host_policy(bucket: str, images_prefix: str = "images/", runs_prefix: str = "runs/") -> dict:
    """The instance profile's policy as the aws_infra role renders it for ``bucket``."""
    import jinja2

    text = jinja2.Template(HOST_POLICY_TEMPLATE.read_text()).render(
        __aws_infra_bucket_arn=f"arn:aws:s3:::{bucket}",
        aws_infra_images_prefix=images_prefix,
        aws_infra_runs_prefix=runs_prefix,
    )
    return json.loads(text)


def _set_auth(endpoint: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=body, headers={"Content-Type": "text/plain"}, method="POST"
    )
    urllib.request.urlopen(request, timeout=10).close()


@contextmanager
def iam_enforced(endpoint: str, policy: dict, bucket: str, user: str = "fruitcloud-host"):
    """Yield credentials of a user whose only policy is ``policy`` (for ``bucket``), with moto enforcing IAM until
    the block ends."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    iam.create_user(UserName=user)
    document = {**policy, "Statement": [*policy["Statement"], *moto_quirks(bucket, policy)]}
    iam.put_user_policy(UserName=user, PolicyName="host", PolicyDocument=json.dumps(document))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    _set_auth(endpoint, b"0")
    try:
        yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        _set_auth(endpoint, b"inf")
        iam.delete_user_policy(UserName=user, PolicyName="host")
        iam.delete_access_key(UserName=user, AccessKeyId=key["AccessKeyId"])
        iam.delete_user(UserName=user)
