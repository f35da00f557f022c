"""A Spark cluster as a user scales out to it: `site.yml -e aws_infra_spark_worker_count=2`, then day 2.

moto plays AWS and three EC2 stand-ins play the master and two workers, each with
its own address on a private network the test made (a VPC subnet), sshd on port 22,
its own instance metadata (the provisioned role's credentials, its key pair) and
the instance id it was launched as. The test inventory is the repository's aws_ec2
inventory; host vars only redirect each host's address (moto's public IPs lead
nowhere) and take jars and weights from the controller's cache. configure.yml
converges the three, the workers register with the master under spark.authenticate
with traffic encrypted, and run_job.yml runs the job on the cluster from the controller.

Then, as a user lives with a cluster: a second configure changes nothing; a third
worker is added (provision and configure touch only it, the master counts it); a
worker is lost in the middle of a run (its instance shuts down) and the run still
ends with every image once; the lost worker is removed, and the cluster is two again.
"""

from __future__ import annotations

import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import boto3
import numpy as np
import pandas as pd
import pytest
from support.ansible_helpers import (
    fake_ubuntu_amis,
    run_playbook,
    sample_subset,
    standin_inventory,
    standin_site_vars,
)
from support.ec2_standin import ec2_standin, podman, private_network, ssh
from support.fake_imds import fake_imds

from harness.launcher import run_job
from harness.moto import TEST_CREDENTIALS, moto_server

# Not in the container group: its hosts and network have their own names, so it may run beside it. Its
# group (with tests/jobs/test_cluster.py) starts first on the other worker: the longest test, not the last.
pytestmark = [pytest.mark.container, pytest.mark.xdist_group("cluster")]

BUCKET = "fruitcloud-cluster-test"
MASTER = f"{BUCKET}-master"
WORKERS = [f"{BUCKET}-worker-{index}" for index in (1, 2, 3)]
NETWORK = "fruitcloud-cluster-test"
RUN_ID = "20260101T000000Z"
LOST_RUN_ID = "20260102T000000Z"
# Enough images that the featurize stage outlasts a worker's shutdown; few enough for the test's minutes.
PER_CLASS = 30
REGION = TEST_CREDENTIALS["AWS_DEFAULT_REGION"]
# Run on the master (the driver's UI listens on its loopback): waits until the executor at {address} runs
# tasks of the featurize job and prints that job's stages, or prints [] after 10 minutes.
FEATURIZING_ON = """
import json, time, urllib.request
def get(path):
    return json.load(urllib.request.urlopen("http://127.0.0.1:4040/api/v1/applications" + path, timeout=5))
stages, deadline = [], time.monotonic() + 600
while not stages and time.monotonic() < deadline:
    try:
        app = get("")[0]["id"]
        jobs = get(f"/{{app}}/jobs?status=running")
        busy = [e for e in get(f"/{{app}}/executors") if e["hostPort"].startswith("{address}:") and e["activeTasks"]]
        featurizing = [s for j in jobs if j.get("description", "").startswith("featurize") for s in j["stageIds"]]
        if featurizing and busy:
            stages = featurizing
    except (OSError, ValueError, IndexError):  # no driver yet, or its UI is starting
        pass
    time.sleep(0.2)
print(json.dumps(stages))
"""


@pytest.fixture
def images(sample_dir, tmp_path) -> tuple[Path, int]:
    root = tmp_path / "images"
    count, _ = sample_subset(sample_dir, root, PER_CLASS)
    return root, count


class Cluster:
    """The stand-ins on one private network, each with its own IMDS; hosts can be added and lost."""

    def __init__(self, stack: ExitStack, image: str, tmp_path: Path, gateway: str):
        self.stack, self.image, self.tmp_path, self.gateway = stack, image, tmp_path, gateway
        self.endpoint = ""
        self.hosts = {}
        # Per host, the access key ids its IMDS handed out (the lists grow as the host asks).
        self.issued_keys: dict[str, list[str]] = {}
        self.imds_urls: dict[str, str] = {}

    def boot(self, name: str) -> None:
        """Start the host; its first boot waits for its instance metadata (serve_metadata)."""
        self.hosts[name] = self.stack.enter_context(
            ec2_standin(
                self.image,
                name,
                None,
                self.tmp_path / "standin" / name,
                console_dir=self.tmp_path / "console",
                network=NETWORK,
            )
        )

    def serve_metadata(self, name: str) -> None:
        """The host's IMDS, as the instance of that name sees it, on the network's gateway."""
        self.imds_urls[name], self.issued_keys[name] = self.stack.enter_context(
            fake_imds(self.endpoint, f"{BUCKET}-host", key_name=BUCKET, instance_name=name, address=self.gateway)
        )
        self.hosts[name].hand_metadata_service(self.imds_urls[name])

    def inventory(self, test_weights) -> Path:
        hosts = {name: (host.address, host.port) for name, host in self.hosts.items()}
        return standin_inventory(self.tmp_path, self.endpoint, hosts, test_weights)

    def ssh(self, name: str, command: str) -> str:
        keys = self.tmp_path / "keys"
        return ssh(
            self.hosts[name], keys / "fruitcloud.pem", keys / "known_hosts", instance_ids(self.endpoint)[name], command
        )

    def master_status(self) -> dict:
        """What the master's UI (on its loopback, as the spark role binds it) says about its workers."""
        answer = self.ssh(
            MASTER,
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8080/json/\").read().decode())'",
        )
        return json.loads(answer)


def instance_ids(endpoint: str) -> dict[str, str]:
    ec2 = boto3.client("ec2", endpoint_url=endpoint, region_name=REGION)
    running = [{"Name": "instance-state-name", "Values": ["running"]}]
    instances = [i for r in ec2.describe_instances(Filters=running)["Reservations"] for i in r["Instances"]]
    return {next(t["Value"] for t in i["Tags"] if t["Key"] == "Name"): i["InstanceId"] for i in instances}


def alive_workers(cluster: Cluster, count: int, seconds: float = 120) -> list[str]:
    """The addresses of the workers the master counts alive, once there are ``count``."""
    deadline = time.monotonic() + seconds
    while True:
        workers = [w["host"] for w in cluster.master_status()["workers"] if w["state"] == "ALIVE"]
        if len(workers) == count or time.monotonic() > deadline:
            return sorted(workers)
        time.sleep(2)


def read_parquet(s3, prefix: str) -> pd.DataFrame:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]
    parts = [o["Key"] for o in listed if o["Key"].endswith(".parquet")]
    return pd.concat(pd.read_parquet(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())) for k in parts)


def manifest_of(s3, run_id: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=f"runs/{run_id}/manifest.json")["Body"].read())


def changed_hosts(run) -> set[str]:
    return {host for host in [MASTER, *WORKERS] if host in run.output and run.recap(host)["changed"] > 0}


def test_a_cluster_built_by_the_playbooks_runs_the_job_and_lives_through_day_2(
    podman_target_image, test_weights, images, tmp_path
):
    images_dir, count = images
    amis = tmp_path / "amis.json"
    amis.write_text(json.dumps(fake_ubuntu_amis()))
    extra_vars = {
        **standin_site_vars(BUCKET, tmp_path / "keys", images_dir, RUN_ID, tmp_path / "reports"),
        "aws_infra_spark_worker_count": 2,
    }
    with ExitStack() as stack:
        gateway = stack.enter_context(private_network(NETWORK))
        cluster = Cluster(stack, podman_target_image, tmp_path, gateway)
        # The bridge (and its gateway address) exists once the first host is on it: moto starts there
        # after the first boot; each host's IMDS after moto.
        for name in (MASTER, *WORKERS[:2]):
            cluster.boot(name)
        cluster.endpoint = stack.enter_context(
            moto_server(
                address=gateway,
                extra_env={"MOTO_AMIS_PATH": str(amis), "MOTO_CONSOLE_DIR": str(tmp_path / "console")},
            )
        )
        for name in (MASTER, *WORKERS[:2]):
            cluster.serve_metadata(name)
        endpoint = extra_vars["fruitcloud_aws_endpoint_url"] = cluster.endpoint
        # On EC2 the SDKs find IMDS at its fixed address; here the driver, started under sudo, is told its
        # host's (the daemons, and so the executors, have it from systemd).
        extra_vars["job_environment"] = {"AWS_EC2_METADATA_SERVICE_ENDPOINT": cluster.imds_urls[MASTER]}
        inventory = cluster.inventory(test_weights)

        site = run_playbook("site.yml", inventory, extra_vars)
        (tmp_path / "site.log").write_text(site.output)
        assert site.returncode == 0, site.output[-6000:]
        for host in (MASTER, *WORKERS[:2]):
            assert (site.recap(host)["failed"], site.recap(host)["unreachable"]) == (0, 0), host
        ids_before = instance_ids(endpoint)
        worker_addresses = sorted(cluster.hosts[name].address for name in WORKERS[:2])
        assert alive_workers(cluster, 2) == worker_addresses

        # Day 2: a third worker. provision.yml launches only it; configure.yml changes only it (and so,
        # on the three hosts it had converged, is the second run that changes nothing).
        cluster.boot(WORKERS[2])
        cluster.serve_metadata(WORKERS[2])
        inventory = cluster.inventory(test_weights)
        three = {**extra_vars, "aws_infra_spark_worker_count": 3}
        grown = run_playbook("provision.yml", inventory, three)
        assert grown.returncode == 0, grown.output[-4000:]
        ids_grown = instance_ids(endpoint)
        assert {k: v for k, v in ids_grown.items() if k != WORKERS[2]} == ids_before and WORKERS[2] in ids_grown
        added = run_playbook("configure.yml", inventory, three)
        (tmp_path / "added.log").write_text(added.output)
        assert added.returncode == 0, added.output[-4000:]
        assert changed_hosts(added) == {WORKERS[2]}
        assert alive_workers(cluster, 3) == sorted(
            host.address for name, host in cluster.hosts.items() if name != MASTER
        )

        # A worker lost mid-run: its instance shuts down while it runs featurize tasks.
        lost_address = cluster.hosts[WORKERS[2]].address
        with ThreadPoolExecutor(max_workers=1) as background:
            running = background.submit(run_playbook, "run_job.yml", inventory, {**three, "job_run_id": LOST_RUN_ID})
            featurize_stages = json.loads(
                cluster.ssh(MASTER, f"python3 - <<'EOF'\n{FEATURIZING_ON.format(address=lost_address)}\nEOF")
            )
            assert featurize_stages, running.result().output[-4000:] if running.done() else "never featurized there"
            podman("stop", "--time", "30", WORKERS[2])
            lost = running.result()
        (tmp_path / "lost.log").write_text(lost.output)
        assert lost.returncode == 0, lost.output[-4000:]
        driver_log = cluster.ssh(MASTER, f"sudo -n cat /var/log/fruitcloud/{LOST_RUN_ID}.log")
        (tmp_path / "lost-driver.log").write_text(driver_log)

        # ...and removed: provision.yml terminates it, the rest of the cluster is left as it was.
        shrunk = run_playbook("provision.yml", inventory, extra_vars)
        assert shrunk.returncode == 0, shrunk.output[-4000:]
        assert instance_ids(endpoint) == ids_before
        # The master forgets a worker that stopped answering (spark.worker.timeout) by itself.
        assert alive_workers(cluster, 2) == worker_addresses
        # The executors on the workers took their credentials from their own host's IMDS, and wrote none down.
        assert cluster.issued_keys[WORKERS[0]] and cluster.issued_keys[WORKERS[1]], cluster.issued_keys
        issued_keys = [key for keys in cluster.issued_keys.values() for key in keys]
        leaked = {
            name: cluster.ssh(
                name,
                "sudo grep -rlF -e "
                + " -e ".join(issued_keys)
                + " /etc/spark /opt/fruitcloud/job /opt/fruitcloud/keras /var/lib/spark /var/log/fruitcloud || true",
            )
            for name in (MASTER, WORKERS[0])
        }
        secret_modes = {
            name: cluster.ssh(name, "sudo -n stat -c '%a %U %G' /etc/spark/conf/spark-defaults.conf").strip()
            for name in (MASTER, WORKERS[0])
        }
        jupyter_reads = cluster.ssh(MASTER, "sudo -n -u jupyter cat /etc/spark/conf/spark-defaults.conf 2>&1 || true")
        secret = cluster.ssh(MASTER, "sudo -n cat /etc/spark/auth.secret").strip()
        worker_conf = cluster.ssh(WORKERS[0], "sudo -n cat /etc/spark/conf/spark-defaults.conf")

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        manifest = manifest_of(s3, RUN_ID)
        assert manifest["counts"]["inputs"] == manifest["counts"]["featurized"] == count
        assert manifest["counts"]["errors"] == 0
        assert manifest["parameters"]["spark_master"] == f"spark://{cluster.hosts[MASTER].address}:7077"
        by_host = manifest["timing"]["featurized_by_host"]
        assert set(by_host) == set(WORKERS[:2]) and all(n > 0 for n in by_host.values()), by_host
        assert sum(by_host.values()) == count
        # The estimate counts the hosts that worked, not only the driver's.
        assert manifest["cost"]["parts"]["instance"]["count"] == 3
        assert "min of 3 x t2.medium" in manifest["cost"]["summary"]
        assert "and 2 executor hosts priced as the same type" in manifest["cost"]["basis"]

        # The single-host run: the same images, weights and settings in local mode on the controller.
        local = run_job(
            [
                "--input",
                f"s3a://{BUCKET}/images/",
                "--output",
                f"s3a://{BUCKET}/local/",
                "--run-id",
                "single-host",
                "--weights",
                str(test_weights[0]),
                "--pca-k",
                "8",
            ],
            endpoint,
        )
        assert local.returncode == 0
        cluster_features = read_parquet(s3, f"runs/{RUN_ID}/features/").set_index("path")
        local_features = read_parquet(s3, "local/single-host/features/").set_index("path")
        assert sorted(cluster_features.index) == sorted(local_features.index) and len(local_features) == count
        np.testing.assert_allclose(
            np.stack(cluster_features.loc[local_features.index, "features"]),
            np.stack(local_features["features"]),
            rtol=1e-4,
            atol=1e-5,
        )
        cluster_pca = read_parquet(s3, f"runs/{RUN_ID}/pca/").set_index("path")
        local_pca = read_parquet(s3, "local/single-host/pca/").set_index("path")
        # Components are defined up to their sign.
        np.testing.assert_allclose(
            np.abs(np.stack(cluster_pca.loc[local_pca.index, "pca"])), np.abs(np.stack(local_pca["pca"])), atol=1e-3
        )

        # The lost worker's tasks ran again on the others: every image once, none in the errors.
        lost_manifest = manifest_of(s3, LOST_RUN_ID)
        assert lost_manifest["counts"]["featurized"] == count and lost_manifest["counts"]["errors"] == 0
        lost_features = read_parquet(s3, f"runs/{LOST_RUN_ID}/features/")
        assert lost_features["path"].is_unique and len(lost_features) == count
        lost_by_host = lost_manifest["timing"]["featurized_by_host"]
        assert sum(lost_by_host.values()) == count and set(WORKERS[:2]) <= set(lost_by_host), lost_by_host
        # It was stopped before it had done its share (a third), and the others did the rest.
        assert lost_by_host.get(WORKERS[2], 0) < count // 3, lost_by_host
        # Its featurize tasks were lost with it (not only a warm-up task) and ran again on the others.
        stages = "|".join(str(stage) for stage in featurize_stages)
        assert re.search(
            rf"Lost task [\d.]+ in stage (?:{stages})\.\d+ \(TID \d+\) \({re.escape(lost_address)} executor \d+\): "
            "ExecutorLostFailure",
            driver_log,
        ), driver_log[-4000:]

        assert set(leaked.values()) == {""}, f"a credential was written on a host: {leaked}"
        assert set(secret_modes.values()) == {"640 root spark"}, secret_modes
        assert "Permission denied" in jupyter_reads
        # The master's secret reached the worker, and no Ansible output (the runs' or their diffs) shows it.
        assert len(secret) == 64
        assert re.search(rf"^spark.authenticate.secret\s+{secret}$", worker_conf, re.MULTILINE)
        assert re.search(r"^spark.network.crypto.enabled\s+true$", worker_conf, re.MULTILINE)
        assert all(secret not in run.output for run in (site, grown, added, lost, shrunk))
