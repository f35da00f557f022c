"""Each default is written once: where a playbook or role repeats one, it must equal the job's own."""

from __future__ import annotations

import re
from importlib import metadata

import featurize
import yaml
from featurize.cli import parse_args
from featurize.config import JobConfig, default
from featurize.images import IMAGE_EXTENSIONS
from support.ansible_helpers import REPO

GROUP_VARS = yaml.safe_load((REPO / "playbooks" / "group_vars" / "all.yml").read_text())


def role_default(role: str, name: str):
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"][name]["default"]


def test_the_command_line_the_playbook_and_the_roles_default_alike():
    job = parse_args(["--input", "s3a://b/images/", "--output", "s3a://b/runs/", "--run-id", "r"])
    assert job == JobConfig("s3a://b/images/", "s3a://b/runs/", "r"), "each CLI default is JobConfig's"
    playbook = {
        "weights": GROUP_VARS["job_weights"],
        "image_size": GROUP_VARS["job_image_size"],
        "batch_size": GROUP_VARS["job_batch_size"] or None,  # 0: no --batch-size
        "pca_variance": GROUP_VARS["job_pca_variance"],
        "pca_k": GROUP_VARS["job_pca_k"] or None,  # 0: no --pca-k
        "cpu_credits": GROUP_VARS["job_cpu_credits"],
    }
    assert playbook == {name: default(name) for name in playbook}
    assert role_default("aws_infra", "aws_infra_cpu_credits") == default("cpu_credits"), "as the hosts are launched"
    assert role_default("model_weights", "model_weights_image_size") == default("image_size")


def test_the_upload_check_accepts_the_extensions_the_job_reads():
    pattern = re.compile(GROUP_VARS["fruitcloud_image_pattern"].replace("(?i)", ""), re.IGNORECASE)
    extensions = set(re.search(r"\\.\((.*)\)\$", GROUP_VARS["fruitcloud_image_pattern"]).group(1).split("|"))
    assert extensions == set(IMAGE_EXTENSIONS)
    assert all(pattern.match(f"Apple/r_1.{extension.upper()}") for extension in IMAGE_EXTENSIONS)
    assert not pattern.match("Apple/notes.txt")


def test_the_version_is_written_once():
    """pyproject.toml and the playbooks' env name read featurize.__version__; nothing else writes it."""
    pattern = re.search(r"regex_search\('(.+?)', '\\1'\)", GROUP_VARS["fruitcloud_version"]).group(1)
    read_by_the_playbooks = re.search(pattern, (REPO / "jobs" / "featurize" / "__init__.py").read_text()).group(1)
    assert read_by_the_playbooks == featurize.__version__ == metadata.version("fruitcloud")
    assert GROUP_VARS["python_env_name"] == "fruitcloud-{{ fruitcloud_version }}"
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()


def test_the_inventory_and_the_playbooks_read_the_region_alike():
    inventory = yaml.safe_load((REPO / "inventory" / "aws_ec2.yml").read_text())
    assert inventory["regions"] == [GROUP_VARS["fruitcloud_inventory_region"]]
    assert "lookup('ansible.builtin.env', 'FRUITCLOUD_REGION'" in GROUP_VARS["fruitcloud_inventory_region"]
