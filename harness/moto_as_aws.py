"""moto's server with two answers made as AWS gives them (run as ``python -m harness.moto_as_aws``).

The S3 listing: moto 5.2 derives a delimited listing's CommonPrefixes from
every key of a versioned bucket, delete-marked ones included; AWS returns a
common prefix only when a current object shares it. s3a's existence checks use
delimited listings, so on moto a folder deleted from a versioned bucket (as the
aws_infra bucket is) stays "existing": Spark then refuses to write it again
(PATH_ALREADY_EXISTS on pca_model/metadata), which AWS never does.

The console output: moto answers GetConsoleOutput with a fixed Xen boot log.
EC2 answers with what the instance wrote to its serial console (cloud-init's
host key block among it), and with no output at all until there is some. With
MOTO_CONSOLE_DIR set, an instance's console is ``<dir>/<its Name tag>.log``,
which the EC2 stand-in that plays it writes at boot; absent, there is none yet.
"""

from __future__ import annotations

import os
from pathlib import Path

from moto.core.responses import ActionResult
from moto.core.utils import utcnow
from moto.ec2.responses.general import General
from moto.ec2.utils import Base64EncodedString
from moto.s3.models import FakeDeleteMarker, S3Backend
from moto.server import main

_list_objects = S3Backend.list_objects


def list_objects_as_aws(self, bucket, prefix, delimiter, marker, max_keys):
    keys, folders, is_truncated, next_marker = _list_objects(self, bucket, prefix, delimiter, marker, max_keys)
    current = [name for name, key in bucket.keys.items() if not isinstance(key, FakeDeleteMarker)]
    folders = [folder for folder in folders if any(name.startswith(folder) for name in current)]
    return keys, folders, is_truncated, next_marker


def console_output_as_aws(self) -> ActionResult:
    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))
    result = {"InstanceId": instance.id, "Timestamp": utcnow()}
    name = next((tag["value"] for tag in instance.get_tags() if tag["key"] == "Name"), None)
    console = Path(os.environ["MOTO_CONSOLE_DIR"], f"{name}.log") if name else None
    if console is not None and console.is_file():
        result["Output"] = Base64EncodedString.from_raw_string(console.read_text())
    return ActionResult(result)


S3Backend.list_objects = list_objects_as_aws
if os.environ.get("MOTO_CONSOLE_DIR"):
    General.get_console_output = console_output_as_aws

if __name__ == "__main__":
    main()
