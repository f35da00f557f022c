"""upload_images.yml against moto: every image lands under its class, a rerun sends nothing.

run_job.yml is tested where it runs, on the EC2 stand-in (tests/playbooks/test_site.py).
"""

from __future__ import annotations

import shutil

import pytest
from support.ansible_helpers import localhost_inventory, run_playbook

pytestmark = pytest.mark.moto


def test_upload_sends_every_image_once(s3, bucket, moto_endpoint, sample_dir, tmp_path):
    # Three classes; the site test uploads the whole sample.
    images = tmp_path / "images"
    for name in ("Kiwi", "Lemon", "Pear"):
        shutil.copytree(sample_dir / name, images / name)
    count = sum(1 for _ in images.rglob("*.jpg"))
    inventory = localhost_inventory(tmp_path)
    common = {"fruitcloud_bucket": bucket, "fruitcloud_aws_endpoint_url": moto_endpoint}

    upload = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(images)})
    assert upload.returncode == 0, upload.output[-3000:]
    assert f"{count} files uploaded, 0 unchanged, 3 classes" in upload.output
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    assert sorted(keys) == sorted(f"images/{p.relative_to(images).as_posix()}" for p in images.rglob("*.jpg"))

    again = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(images)})
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap()["changed"] == 0
    assert f"0 files uploaded, {count} unchanged" in again.output
