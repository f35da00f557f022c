"""The cost estimate: each part from what the run measured times the price table, and no price made up."""

from __future__ import annotations

import json
import os

import pytest
import yaml
from featurize import cost
from featurize.cli import parse_args
from featurize.cost import Instance
from support.ansible_helpers import REPO

T2_IRELAND = Instance("t2.medium", "eu-west-1", on_ec2=True)


def test_a_run_is_priced_part_by_part_from_what_it_measured():
    estimate = cost.estimate(
        instance=T2_IRELAND,
        prices=cost.load_prices(None),
        wall_seconds=1800,
        # Both vCPUs busy for the half hour: 1.0 vCPU-hour, of which the baseline (2 x 20 %) pays 0.2.
        busy_vcpu_seconds=3600,
        requests={"get": 10_000, "put": 300, "list": 200, "free": 7},
        stored_bytes=2 * 10**9,
    )
    parts = estimate["parts"]
    assert parts["instance"]["usd"] == pytest.approx(0.5 * 0.0504)
    assert parts["public_ipv4"]["usd"] == pytest.approx(0.5 * 0.005)
    assert (parts["cpu_credits"]["baseline_vcpu_hours"], parts["cpu_credits"]["surplus_vcpu_hours"]) == (0.2, 0.8)
    assert parts["cpu_credits"]["usd"] == pytest.approx(0.8 * 0.05)
    assert parts["s3_requests"]["usd"] == pytest.approx(10 * 0.0004 + 0.5 * 0.005)
    assert estimate["storage_usd_per_month"] == pytest.approx(2 * 0.023)
    assert estimate["total_usd"] == pytest.approx(0.0252 + 0.0025 + 0.04 + 0.0065)
    assert estimate["basis"] == "this instance (t2.medium, eu-west-1)"
    line = cost.summary_line(estimate)
    assert line.startswith("cost $0.0742: instance $0.0252 (30.0 min of t2.medium)")
    assert "10,000 GET, 300 PUT, 200 LIST" in line


def test_standard_credits_pay_no_surplus_and_a_non_burstable_type_has_none():
    common = {"prices": cost.load_prices(None), "wall_seconds": 3600, "busy_vcpu_seconds": 7200, "requests": {}}
    standard = cost.estimate(instance=T2_IRELAND, cpu_credits="standard", stored_bytes=0, **common)
    assert standard["parts"]["cpu_credits"]["surplus_vcpu_hours"] == 1.6
    assert standard["parts"]["cpu_credits"]["usd"] == 0
    m5 = cost.estimate(instance=Instance("m5.large", "eu-west-1", True), stored_bytes=0, **common)
    assert m5["parts"]["cpu_credits"]["usd"] == 0 and "surplus_vcpu_hours" not in m5["parts"]["cpu_credits"]
    assert m5["total_usd"] == pytest.approx(0.107 + 0.005)


@pytest.mark.parametrize(
    ("instance", "error"),
    [
        (Instance("m7i.large", "eu-west-1", True), "no price for m7i.large in eu-west-1"),
        (Instance("t2.medium", "ap-south-2", True), "no prices for region ap-south-2"),
    ],
)
def test_a_missing_price_is_said_not_priced_at_zero(instance, error):
    estimate = cost.estimate(
        instance=instance,
        prices=cost.load_prices(None),
        wall_seconds=60,
        busy_vcpu_seconds=0,
        requests={},
        stored_bytes=0,
    )
    assert (estimate["total_usd"], estimate["error"]) == (None, error)
    assert cost.summary_line(estimate).startswith(f"cost: unknown ({error})")


def test_a_price_file_overrides_and_extends_the_defaults(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"eu-west-1": {"instance_hour": {"m7i.large": 0.1}, "s3_gb_month": 0.02}}))
    table = cost.load_prices(str(prices))
    assert table["eu-west-1"]["instance_hour"]["m7i.large"] == 0.1
    assert table["eu-west-1"]["instance_hour"]["t2.medium"] == 0.0504, "the other types are kept"
    assert table["eu-west-1"]["s3_gb_month"] == 0.02
    assert cost.DEFAULT_PRICES["eu-west-1"]["s3_gb_month"] == 0.023, "the defaults are not changed"


def test_off_ec2_the_run_is_priced_as_on_the_reference_host(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert cost.this_instance() == Instance("t2.medium", "us-east-1", on_ec2=False)
    estimate = cost.estimate(
        instance=cost.this_instance(),
        prices=cost.load_prices(None),
        wall_seconds=3600,
        busy_vcpu_seconds=None,
        requests={},
        stored_bytes=0,
    )
    assert estimate["basis"] == "not on EC2: the price of the same run on a t2.medium in us-east-1"
    assert estimate["total_usd"] == pytest.approx(0.0464 + 0.005)


def test_requests_are_classed_as_s3_bills_them():
    boto3_counts = {"GetObject": 100, "HeadObject": 2, "PutObject": 10, "ListObjectsV2": 3, "DeleteObject": 4, "X": 1}
    s3a_counts = {"action_http_get_request": 5, "object_put_request": 6, "object_list_request": 7, "op_open": 99}
    assert cost.request_classes(boto3_counts, s3a_counts) == {"get": 107, "put": 16, "list": 10, "free": 4, "other": 1}


def test_busy_cpu_is_read_from_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 20 30 5000 40 5 6 7 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    ticks = os.sysconf("SC_CLK_TCK")
    assert cost.busy_cpu_seconds(str(stat)) == pytest.approx((100 + 20 + 30 + 5 + 6 + 7) / ticks)
    assert cost.busy_cpu_seconds(str(tmp_path / "missing")) is None


def test_provision_prints_the_same_hourly_prices_the_job_charges():
    role_vars = yaml.safe_load((REPO / "roles" / "aws_infra" / "vars" / "main.yml").read_text())
    assert role_vars["__aws_infra_hourly_instance_usd"] == cost.DEFAULT_PRICES["eu-west-1"]["instance_hour"]
    assert role_vars["__aws_infra_prices_date"] == cost.PRICES_DATE
    assert role_vars["__aws_infra_s3_gb_month_usd"] == cost.DEFAULT_PRICES["eu-west-1"]["s3_gb_month"]


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"eu-west-1": 5}'])
def test_a_price_file_that_is_no_table_is_refused_before_the_run(tmp_path, capsys, content):
    prices = tmp_path / "prices.json"
    prices.write_text(content)
    with pytest.raises(SystemExit):
        parse_args(["--input", "s3a://b/images/", "--output", "s3a://b/runs/", "--prices", str(prices)])
    assert f"--prices {prices}: not a price table" in capsys.readouterr().err


def test_an_estimate_that_fails_is_said_and_does_not_fail_the_run():
    from types import SimpleNamespace

    from featurize.manifest import run_cost

    estimate = run_cost(SimpleNamespace())
    assert estimate["total_usd"] is None and estimate["error"].startswith("the estimate failed: ")
    assert estimate["summary"].startswith("cost: unknown (the estimate failed: ")


def test_the_executor_hosts_of_a_cluster_are_priced_beside_the_driver_s():
    estimate = cost.estimate(
        instance=T2_IRELAND,
        prices=cost.load_prices(None),
        wall_seconds=1800,
        busy_vcpu_seconds=0,
        requests={},
        stored_bytes=0,
        executor_hosts=2,
    )
    parts = estimate["parts"]
    assert parts["instance"]["usd"] == pytest.approx(3 * 0.5 * 0.0504)
    assert parts["public_ipv4"]["usd"] == pytest.approx(3 * 0.5 * 0.005)
    assert estimate["basis"] == (
        "this instance (t2.medium, eu-west-1) and 2 executor hosts priced as the same type"
        " (CPU credits of this instance only)"
    )
    assert cost.summary_line(estimate).startswith(
        f"cost ${3 * 0.5 * (0.0504 + 0.005):.4f}: instance $0.0756 (30.0 min of 3 x t2.medium)"
    )
