"""upload_images.yml against moto: every image lands under its class, a rerun sends nothing.

run_job.yml is tested where it runs, on the EC2 stand-in (tests/playbooks/test_site.py).
"""

from __future__ import annotations

import pytest
from ansible_helpers import localhost_inventory, run_playbook

pytestmark = pytest.mark.e2e


def test_upload_sends_every_image_once(s3, bucket, moto_endpoint, sample_dir, tmp_path):
    inventory = localhost_inventory(tmp_path)
    common = {"fruitcloud_bucket": bucket, "fruitcloud_aws_endpoint_url": moto_endpoint}

    upload = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(sample_dir)})
    assert upload.returncode == 0, upload.output[-3000:]
    assert "3976 files uploaded, 0 unchanged, 24 classes" in upload.output
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    assert sorted(keys) == sorted(f"images/{p.relative_to(sample_dir).as_posix()}" for p in sample_dir.rglob("*.jpg"))

    again = run_playbook("upload_images.yml", inventory, {**common, "upload_images_dir": str(sample_dir)})
    assert again.returncode == 0, again.output[-3000:]
    assert again.recap()["changed"] == 0
    assert "0 files uploaded, 3976 unchanged" in again.output
