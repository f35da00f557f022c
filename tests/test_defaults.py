"""Each default is written once: where a playbook or role repeats one, it must equal the job's own."""

from __future__ import annotations

import re

import yaml
from ansible_helpers import REPO
from featurize.cli import parse_args
from featurize.images import IMAGE_EXTENSIONS

GROUP_VARS = yaml.safe_load((REPO / "playbooks" / "group_vars" / "all.yml").read_text())


def test_run_job_defaults_are_the_jobs_defaults():
    job = parse_args(["--input", "s3a://b/images/", "--output", "s3a://b/runs/"])
    playbook = {
        "weights": GROUP_VARS["job_weights"],
        "image_size": GROUP_VARS["job_image_size"],
        "batch_size": GROUP_VARS["job_batch_size"],
        "pca_variance": GROUP_VARS["job_pca_variance"],
    }
    assert playbook == {name: getattr(job, name) for name in playbook}


def test_the_upload_check_accepts_the_extensions_the_job_reads():
    pattern = re.compile(GROUP_VARS["fruitcloud_image_pattern"].replace("(?i)", ""), re.IGNORECASE)
    extensions = set(re.search(r"\\.\((.*)\)\$", GROUP_VARS["fruitcloud_image_pattern"]).group(1).split("|"))
    assert extensions == set(IMAGE_EXTENSIONS)
    assert all(pattern.match(f"Apple/r_1.{extension.upper()}") for extension in IMAGE_EXTENSIONS)
    assert not pattern.match("Apple/notes.txt")
