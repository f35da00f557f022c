"""The Vagrant scenario cannot run here (no VirtualBox): check that its playbooks parse and its config is complete."""

import subprocess

import yaml
from support.ansible_helpers import REPO, ansible_env

SCENARIO = REPO / "molecule" / "vagrant"


def test_vagrant_scenario_targets_ubuntu_with_virtualbox():
    config = yaml.safe_load((SCENARIO / "molecule.yml").read_text())
    assert config["driver"] == {"name": "vagrant", "provider": {"name": "virtualbox"}}
    assert config["platforms"][0]["box"] == "${MOLECULE_BOX:-bento/ubuntu-24.04}"
    assert config["provisioner"]["playbooks"]["converge"] == "../default/converge.yml"
    assert {"converge", "idempotence", "verify"} <= set(config["scenario"]["test_sequence"])


def test_vagrant_playbooks_pass_syntax_check(tmp_path):
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("spark:\n  children:\n    spark_master:\n      hosts:\n        fruitcloud-vm:\n")
    for playbook in (SCENARIO / "verify.yml", REPO / "molecule" / "default" / "converge.yml"):
        result = subprocess.run(
            [str(REPO / ".venv/bin/ansible-playbook"), "--syntax-check", "-i", str(inventory), str(playbook)],
            env=ansible_env({"ANSIBLE_ROLES_PATH": str(REPO / "roles")}),
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
