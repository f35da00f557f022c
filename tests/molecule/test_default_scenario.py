"""Molecule's default scenario (converge, idempotence, verify) on the EC2 stand-in.

The stand-in boots as an EC2 instance does: its first-boot unit installs the
public key of the key pair imported into moto here, read from the fake
instance metadata, and Molecule connects over SSH as ubuntu with that key and
sudo. The verify step reads from this moto server through s3a and runs the
deployed job with --weights imagenet from the provisioned (test) weights file
as the job account; the manifest it leaves in moto is checked here.

It runs on Debian 13 (Python 3.13, OpenJDK 21; MOLECULE_SUITES=bookworm,trixie adds Debian 12):
every path that holds the host's Python version must come from the host's own
interpreter, as on Ubuntu 24.04 (3.12) and 22.04 (3.10). `make molecule` runs it; `make test`
leaves it out (marker `molecule`): tests/playbooks/test_site.py converges the same roles on
the same Debian 13 stand-in through site.yml, and tests/playbooks/test_scale_out.py checks
that a second configure changes nothing, on Debian 12. On a slow day this scenario alone took
23 minutes of a make test that ran past CI's 90.
The s3a jars are downloaded on the host by their Maven coordinates, as on EC2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import boto3
import pytest
from support.ansible_helpers import REPO
from support.ec2_standin import CA_CERTIFICATES, CONTAINERS_ENV, podman, write_first_boot_settings
from support.fake_imds import fake_imds

from harness.moto import TEST_CREDENTIALS, free_port

pytestmark = [pytest.mark.container, pytest.mark.molecule]


def standin_settings(tmp_path, imds_url: str) -> dict[str, str]:
    """The EC2_STANDIN_* variables of molecule.yml: first-boot settings, CA certificates, key, known hosts."""
    settings, certificates = tmp_path / "standin", tmp_path / "ca-certificates"
    certificates.mkdir()
    for certificate in CA_CERTIFICATES.glob("*.crt") if CA_CERTIFICATES.is_dir() else []:
        shutil.copy(certificate, certificates)
    port = free_port()
    write_first_boot_settings(settings, imds_url, port, "127.0.0.1")
    return {
        "EC2_STANDIN_SETTINGS": str(settings),
        "EC2_STANDIN_CA_DIR": str(certificates),
        "EC2_STANDIN_SSH_PORT": str(port),
        "EC2_STANDIN_KEY": str(tmp_path / "fruitcloud.pem"),
        "EC2_STANDIN_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
    }


SUITES = {"bookworm": ("3.11", "17"), "trixie": ("3.13", "21")}
CHOSEN = os.environ.get("MOLECULE_SUITES", "trixie").split(",")


@pytest.mark.parametrize(("suite", "python", "java"), [(suite, *SUITES[suite]) for suite in CHOSEN], ids=CHOSEN)
def test_default_scenario_converges_idempotently_and_verifies(
    suite, python, java, request, test_weights, s3, bucket, moto_endpoint, sample_dir, tmp_path
):
    standin = request.getfixturevalue("podman_target_image" if suite == "bookworm" else "trixie_target_image")
    platform = f"fruitcloud-{suite}"
    s3.put_object(Bucket=bucket, Key="verify/hello.txt", Body=b"hello from moto\n")
    classes = sorted(p for p in sample_dir.iterdir() if p.is_dir())
    for folder in classes:
        image = sorted(folder.glob("*.jpg"))[0]
        s3.upload_file(str(image), bucket, f"images/{folder.name}/{image.name}")

    key = tmp_path / "fruitcloud.pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    ec2 = boto3.client("ec2", endpoint_url=moto_endpoint, region_name=TEST_CREDENTIALS["AWS_DEFAULT_REGION"])
    ec2.import_key_pair(KeyName="fruitcloud", PublicKeyMaterial=key.with_suffix(".pem.pub").read_bytes())
    podman("rm", "--force", platform)
    with fake_imds(moto_endpoint, role_name="fruitcloud-host", key_name="fruitcloud") as (imds_url, _):
        env = {
            **os.environ,
            **CONTAINERS_ENV,
            **standin_settings(tmp_path, imds_url),
            "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
            "MOLECULE_IMAGE": standin,
            "MOLECULE_PLATFORM": platform,
            "EXPECT_PYTHON": python,
            "EXPECT_JAVA": java,
            "MOTO_ENDPOINT": moto_endpoint,
            "VERIFY_BUCKET": bucket,
            "TEST_WEIGHTS_FILE": str(test_weights[0]),
            "TEST_WEIGHTS_SHA256": test_weights[1],
            "ANSIBLE_NOCOLOR": "1",
        }
        result = subprocess.run(
            ["molecule", "test", "-s", "default"], cwd=REPO, env=env, capture_output=True, text=True, check=False
        )
    ec2.delete_key_pair(KeyName="fruitcloud")
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
