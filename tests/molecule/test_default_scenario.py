"""Molecule's default scenario (converge, idempotence, verify) on the podman Debian 12 target.

The verify step reads from this moto server through s3a and runs the deployed
job with --weights imagenet from the provisioned (test) weights file; the
manifest it leaves in moto is checked here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from ansible_helpers import REPO

pytestmark = pytest.mark.molecule


def test_default_scenario_converges_idempotently_and_verifies(
    podman_target_image, test_weights, s3, bucket, moto_endpoint, sample_dir
):
    s3.put_object(Bucket=bucket, Key="verify/hello.txt", Body=b"hello from moto\n")
    classes = sorted(p for p in sample_dir.iterdir() if p.is_dir())
    for folder in classes:
        image = sorted(folder.glob("*.jpg"))[0]
        s3.upload_file(str(image), bucket, f"images/{folder.name}/{image.name}")

    env = {
        **os.environ,
        "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
        "CONTAINERS_CONF": str(REPO / "molecule" / "containers.conf"),
        "MOTO_ENDPOINT": moto_endpoint,
        "VERIFY_BUCKET": bucket,
        "TEST_WEIGHTS_SHA256": test_weights[1],
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        ["molecule", "test", "-s", "default"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode == 0, output[-6000:]
    for step in ("converge", "idempotence", "verify"):
        assert re.search(rf"{step}: Executed: Successful", output), f"{step} did not run:\n{output[-3000:]}"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="runs/molecule/manifest.json")["Body"].read())
    assert manifest["parameters"]["weights"] == "imagenet"
    assert (manifest["counts"]["inputs"], manifest["counts"]["featurized"], manifest["pca"]["k"]) == (
        len(classes),
        len(classes),
        5,
    )
