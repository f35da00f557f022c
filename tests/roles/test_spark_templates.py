"""The spark role's templates rendered for a cluster member, as flintrock render-tests its templates."""

from __future__ import annotations

import pytest
import yaml
from support.ansible_helpers import REPO, localhost_inventory, run_playbook

RENDERED = ("spark-defaults.conf", "spark-env.sh", "spark-daemon.service")
FACTS = {"memtotal_mb": 3900, "processor_vcpus": 2, "default_ipv4": {"address": "10.0.0.5"}}


def render(tmp_path, role: str, secret: str | None, *, local_conf: bool = False) -> dict[str, str]:
    """The templates as configure.yml writes them: spark_conf_dir, or with ``local_conf`` spark_local_conf_dir."""
    play = [
        {
            "name": "Render the spark templates",
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [str(REPO / "roles/spark/defaults/main.yml"), str(REPO / "roles/spark/vars/main.yml")],
            "vars": {"ansible_facts": FACTS},
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.copy": {
                        "content": "{{ lookup('ansible.builtin.template', templates ~ '/' ~ item ~ '.j2') }}",
                        "dest": f"{tmp_path}/{{{{ item }}}}",
                        "mode": "0644",
                    },
                    "loop": list(RENDERED),
                }
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    # Extra vars: play vars would lose to the role defaults loaded as vars_files.
    chosen = {
        "ansible_managed": "managed",
        "templates": str(REPO / "roles/spark/templates"),
        "spark_standalone_role": role,
        "spark_master_host": "10.0.0.4",
        "__spark_conf_local": local_conf or role == "none",
        # What install-wheel.yml reads from the host's pyspark.
        "__spark_wheel_home": "/opt/fruitcloud/env/lib/python3.12/site-packages/pyspark",
        **({"__spark_auth_secret": secret} if secret else {}),
    }
    run = run_playbook(str(playbook), localhost_inventory(tmp_path), chosen)
    assert run.returncode == 0, run.output[-3000:]
    return {
        name: (tmp_path / name).read_text() for name in ("spark-defaults.conf", "spark-env.sh", "spark-daemon.service")
    }


def settings(conf: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))


@pytest.mark.parametrize("role", ["master", "worker"])
def test_a_cluster_member_authenticates_and_keeps_its_uis_on_loopback(tmp_path, role):
    files = render(tmp_path, role, secret="0123abcd")
    conf = settings(files["spark-defaults.conf"])
    assert (conf["spark.authenticate"], conf["spark.authenticate.secret"]) == ("true", "0123abcd")
    assert conf["spark.network.crypto.enabled"] == "true"
    assert conf["spark.master"] == "spark://10.0.0.4:7077"
    assert (conf["spark.driver.host"], conf["spark.driver.bindAddress"]) == ("10.0.0.5", "10.0.0.5")
    assert "export SPARK_LOCAL_IP=127.0.0.1" in files["spark-env.sh"]
    daemon = "--host 10.0.0.4 --port 7077" if role == "master" else "--host 10.0.0.5 --cores 2"
    assert daemon in files["spark-daemon.service"]


def test_a_single_host_runs_local_mode_without_a_secret(tmp_path):
    files = render(tmp_path, "none", secret=None)
    conf = settings(files["spark-defaults.conf"])
    assert conf["spark.master"] == "local[2,4]"
    assert "spark.authenticate" not in conf and "spark.driver.host" not in conf
    assert "export SPARK_LOCAL_IP=127.0.0.1" in files["spark-env.sh"]
    # 2 vCPUs: the serial collector, for driver and executors alike.
    assert conf["spark.driver.extraJavaOptions"] == conf["spark.executor.extraJavaOptions"] == "-XX:+UseSerialGC"


@pytest.mark.parametrize("role", ["master", "worker"])
def test_the_notebooks_configuration_of_a_cluster_member_has_no_secret_and_runs_local_mode(tmp_path, role):
    files = render(tmp_path, role, secret="0123abcd", local_conf=True)
    conf = settings(files["spark-defaults.conf"])
    assert conf["spark.master"] == "local[2,4]"
    assert "0123abcd" not in files["spark-defaults.conf"] + files["spark-env.sh"]
    assert not any(key.startswith(("spark.authenticate", "spark.network.crypto", "spark.driver.host")) for key in conf)
    assert "SPARK_WORKER_CORES" not in files["spark-env.sh"]
    # The rest is the cluster's: the same s3a, memory and Python settings.
    cluster = settings(render(tmp_path, role, secret="0123abcd")["spark-defaults.conf"])
    assert {key: value for key, value in cluster.items() if key in conf and key != "spark.master"} == {
        key: value for key, value in conf.items() if key != "spark.master"
    }
