"""What a run cost: instance-hours, public IPv4, CPU credit surplus, S3 requests, and the outputs' storage.

An estimate from what the run measured (wall time, the host's busy CPU, the
S3 requests it sent) times a price table: on EC2 at the instance's own type
and region (from the instance metadata service), elsewhere the price of the
same run on a t2.medium, labelled so. docs/costs.md says how wrong it can be.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from featurize.ec2 import imds_get

# USD, on-demand Linux, read from the AWS price pages on PRICES_DATE; the
# instance types are those docs/performance.md recommends. The eu-west-1 hourly
# prices are the ones provision.yml prints (roles/aws_infra/vars/main.yml;
# tests/test_defaults.py keeps the two equal). Override with --prices FILE.
PRICES_DATE = "2026-11-01"
DEFAULT_PRICES: dict[str, dict] = {
    "eu-west-1": {
        "instance_hour": {
            "t2.medium": 0.0504,
            "t3.medium": 0.0456,
            "t3.large": 0.0912,
            "m5.large": 0.107,
            "m5.xlarge": 0.214,
            "c5.xlarge": 0.192,
        },
        "public_ipv4_hour": 0.005,
        "cpu_credit_surplus_vcpu_hour": 0.05,
        "s3_get_per_1000": 0.0004,
        "s3_put_per_1000": 0.005,
        "s3_gb_month": 0.023,
    },
    "us-east-1": {
        "instance_hour": {
            "t2.medium": 0.0464,
            "t3.medium": 0.0416,
            "t3.large": 0.0832,
            "m5.large": 0.096,
            "m5.xlarge": 0.192,
            "c5.xlarge": 0.17,
        },
        "public_ipv4_hour": 0.005,
        "cpu_credit_surplus_vcpu_hour": 0.05,
        "s3_get_per_1000": 0.0004,
        "s3_put_per_1000": 0.005,
        "s3_gb_month": 0.023,
    },
}
# Burstable types: vCPUs and the baseline share of each that earned credits pay for.
BURSTABLE = {"t2.medium": (2, 0.20), "t3.medium": (2, 0.20), "t3.large": (2, 0.30)}
# What a run off EC2 is priced as: the project's default host.
REFERENCE_INSTANCE = "t2.medium"
DEFAULT_REGION = "eu-west-1"

# S3 bills HEAD like GET, and LIST, COPY and POST (DeleteObjects too, counted here) like PUT; DELETE is free.
BOTO3_REQUEST_CLASS = {
    "GetObject": "get",
    "HeadObject": "get",
    "HeadBucket": "get",
    "ListObjectsV2": "list",
    "ListObjects": "list",
    "PutObject": "put",
    "CopyObject": "put",
    "CreateMultipartUpload": "put",
    "UploadPart": "put",
    "CompleteMultipartUpload": "put",
    "DeleteObjects": "put",
    "DeleteObject": "free",
}
# The same classes for the counters of Hadoop's S3A filesystem (its storage statistics).
S3A_REQUEST_CLASS = {
    "action_http_get_request": "get",
    "object_metadata_request": "get",
    "object_list_request": "list",
    "object_continue_list_request": "list",
    "object_put_request": "put",
    "object_copy_requests": "put",
    "object_multipart_initiated": "put",
    "object_bulk_delete_request": "put",
    "object_delete_request": "free",
}


@dataclass(frozen=True)
class Instance:
    type: str
    region: str
    on_ec2: bool


def this_instance() -> Instance:
    """The instance type and region from IMDS; off EC2, the reference type in the configured region.

    Off EC2 the metadata service is asked once: a second question would only wait out its timeout again.
    """
    configured = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    instance_type = imds_get("instance-type")
    if instance_type:
        return Instance(instance_type, imds_get("placement/region") or configured, on_ec2=True)
    return Instance(REFERENCE_INSTANCE, configured, on_ec2=False)


def busy_cpu_seconds(stat_path: str = "/proc/stat") -> float | None:
    """CPU-seconds the host has spent busy since boot (user, nice, system, irq, softirq, steal); None off Linux."""
    try:
        with open(stat_path) as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def load_prices(path: str | None) -> dict[str, dict]:
    """The default table, with a JSON file's regions (and within them, keys) laid over it."""
    prices = {
        region: {**table, "instance_hour": dict(table["instance_hour"])} for region, table in DEFAULT_PRICES.items()
    }
    if path:
        with open(path) as override:
            for region, table in json.load(override).items():
                merged = prices.setdefault(region, {"instance_hour": {}})
                merged["instance_hour"].update(table.get("instance_hour", {}))
                merged.update({key: value for key, value in table.items() if key != "instance_hour"})
    return prices


def request_classes(boto3_counts: dict[str, int], s3a_counts: dict[str, int]) -> dict[str, int]:
    """GET, PUT and LIST requests (and the free ones) summed over the job's boto3 calls and Hadoop's S3A."""
    classes = {"get": 0, "put": 0, "list": 0, "free": 0, "other": 0}
    for operation, count in boto3_counts.items():
        classes[BOTO3_REQUEST_CLASS.get(operation, "other")] += count
    for statistic, kind in S3A_REQUEST_CLASS.items():
        classes[kind] += s3a_counts.get(statistic, 0)
    return classes


def s3a_requests_named(s3a_counts: dict[str, int]) -> dict[str, int]:
    """The S3A counters that are S3 requests, for the manifest (the others count bytes and calls)."""
    return {name: s3a_counts[name] for name in S3A_REQUEST_CLASS if s3a_counts.get(name)}


def surplus_vcpu_hours(instance_type: str, hours: float, busy_vcpu_hours: float) -> tuple[float, float]:
    """Baseline and surplus vCPU-hours of a burstable type, with no credits banked at the start (an upper bound)."""
    vcpus, baseline_share = BURSTABLE.get(instance_type, (0, 0.0))
    baseline = vcpus * baseline_share * hours
    return baseline, max(0.0, busy_vcpu_hours - baseline) if vcpus else 0.0


def estimate(
    *,
    instance: Instance,
    prices: dict[str, dict],
    wall_seconds: float,
    busy_vcpu_seconds: float | None,
    requests: dict[str, int],
    stored_bytes: int,
    cpu_credits: str = "unlimited",
    executor_hosts: int = 0,
) -> dict:
    """The cost estimate of one run, part by part; ``total_usd`` is None when a price is missing.

    ``executor_hosts``: the other hosts of a cluster that featurized (the driver sees only its own instance
    type and CPU, so they are priced as its type, for the run's wall time, without CPU credits).
    """
    hours = wall_seconds / 3600
    hosts = 1 + executor_hosts
    table = prices.get(instance.region)
    missing = []
    if table is None:
        missing.append(f"no prices for region {instance.region}")
        table = {"instance_hour": {}}
    hourly = table["instance_hour"].get(instance.type)
    if hourly is None and table["instance_hour"]:
        missing.append(f"no price for {instance.type} in {instance.region}")
    basis = (
        f"this instance ({instance.type}, {instance.region})"
        if instance.on_ec2
        else f"not on EC2: the price of the same run on a {instance.type} in {instance.region}"
    )
    if executor_hosts:
        basis += (
            f" and {executor_hosts} executor host{'s' if executor_hosts > 1 else ''} priced as the same type"
            " (CPU credits of this instance only)"
        )
    parts: dict[str, dict] = {
        "instance": {"type": instance.type, "count": hosts, "hours": round(hours, 4), "usd_per_hour": hourly},
        "public_ipv4": {"count": hosts, "hours": round(hours, 4), "usd_per_hour": table.get("public_ipv4_hour")},
        "s3_requests": {name: count for name, count in requests.items() if count},
        "s3_storage": {"bytes": stored_bytes, "usd_per_gb_month": table.get("s3_gb_month")},
    }
    busy_hours = None if busy_vcpu_seconds is None else busy_vcpu_seconds / 3600
    baseline, surplus = surplus_vcpu_hours(instance.type, hours, busy_hours or 0.0)
    credits = {"mode": cpu_credits, "busy_vcpu_hours": None if busy_hours is None else round(busy_hours, 4)}
    if instance.type in BURSTABLE:
        credits.update(baseline_vcpu_hours=round(baseline, 4), surplus_vcpu_hours=round(surplus, 4))
    parts["cpu_credits"] = credits
    if missing:
        return {
            "basis": basis,
            "prices_date": PRICES_DATE,
            "total_usd": None,
            "error": "; ".join(missing),
            "parts": parts,
        }
    charged_surplus = surplus if cpu_credits == "unlimited" else 0.0
    parts["instance"]["usd"] = hosts * hours * hourly
    parts["public_ipv4"]["usd"] = hosts * hours * table["public_ipv4_hour"]
    parts["cpu_credits"]["usd"] = charged_surplus * table["cpu_credit_surplus_vcpu_hour"]
    parts["s3_requests"]["usd"] = (
        requests.get("get", 0) * table["s3_get_per_1000"]
        # Operations this table does not name are priced as PUTs, the dearer class.
        + sum(requests.get(kind, 0) for kind in ("put", "list", "other")) * table["s3_put_per_1000"]
    ) / 1000
    parts["s3_storage"]["usd_per_month"] = stored_bytes / 1e9 * table["s3_gb_month"]
    total = sum(parts[name]["usd"] for name in ("instance", "public_ipv4", "cpu_credits", "s3_requests"))
    for part in parts.values():
        for key in ("usd", "usd_per_month"):
            if key in part:
                part[key] = round(part[key], 6)
    return {
        "basis": basis,
        "currency": "USD",
        "prices_date": PRICES_DATE,
        "total_usd": round(total, 6),
        "storage_usd_per_month": parts["s3_storage"]["usd_per_month"],
        "parts": parts,
    }


def summary_line(cost: dict) -> str:
    """One line for logs, the report and run_job.yml."""
    if cost.get("total_usd") is None:
        return f"cost: unknown ({cost.get('error', 'no estimate')}); {cost['basis']}"
    parts = cost["parts"]
    requests = parts["s3_requests"]
    count = parts["instance"].get("count", 1)
    instances = f"{count} x " if count > 1 else ""
    return (
        f"cost ${cost['total_usd']:.4f}: instance ${parts['instance']['usd']:.4f} "
        f"({parts['instance']['hours'] * 60:.1f} min of {instances}{parts['instance']['type']}), "
        f"public IPv4 ${parts['public_ipv4']['usd']:.4f}, CPU credits ${parts['cpu_credits']['usd']:.4f}, "
        f"S3 requests ${requests['usd']:.4f} ({requests.get('get', 0):,} GET, {requests.get('put', 0):,} PUT, "
        f"{requests.get('list', 0):,} LIST); outputs stored ${cost['storage_usd_per_month']:.4f}/month; {cost['basis']}"
    )
