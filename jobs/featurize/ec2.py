"""This host's EC2 instance metadata (IMDSv2, as provision.yml requires), or None off EC2."""

from __future__ import annotations

import os


def imds_get(path: str, timeout: float = 0.5) -> str | None:
    """One value under ``latest/meta-data/``; None off EC2, on any error, or with AWS_EC2_METADATA_DISABLED.

    AWS_EC2_METADATA_SERVICE_ENDPOINT (botocore's own variable) points it at a
    stand-in in tests, as it does boto3's credential lookup.
    """
    import urllib.request

    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
        return None
    endpoint = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254").rstrip("/")
    try:
        token_request = urllib.request.Request(
            f"{endpoint}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        with urllib.request.urlopen(token_request, timeout=timeout) as response:
            token = response.read().decode()
        request = urllib.request.Request(
            f"{endpoint}/latest/meta-data/{path}", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode().strip() or None
    except OSError:
        return None
