"""moto's server with one S3 listing fixed to answer as AWS does (run as ``python -m harness.moto_s3_listing``).

moto 5.2 derives a delimited listing's CommonPrefixes from every key of a
versioned bucket, delete-marked ones included; AWS returns a common prefix
only when a current object shares it. s3a's existence checks use delimited
listings, so on moto a folder deleted from a versioned bucket (as the
aws_infra bucket is) stays "existing": Spark then refuses to write it again
(PATH_ALREADY_EXISTS on pca_model/metadata), which AWS never does.
"""

from __future__ import annotations

from moto.s3.models import FakeDeleteMarker, S3Backend
from moto.server import main

_list_objects = S3Backend.list_objects


def list_objects_as_aws(self, bucket, prefix, delimiter, marker, max_keys):
    keys, folders, is_truncated, next_marker = _list_objects(self, bucket, prefix, delimiter, marker, max_keys)
    current = [name for name, key in bucket.keys.items() if not isinstance(key, FakeDeleteMarker)]
    folders = [folder for folder in folders if any(name.startswith(folder) for name in current)]
    return keys, folders, is_truncated, next_marker


S3Backend.list_objects = list_objects_as_aws

if __name__ == "__main__":
    main()
