"""Small files (manifest, report) beside the Spark outputs, on S3 or a local disk.

Spark writes the data; this module writes the few driver-side files with
boto3, which follows the same credential chain as s3a (environment, profile,
instance profile) and the same endpoint as ``spark.hadoop.fs.s3a.endpoint``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

S3_SCHEMES = ("s3", "s3a", "s3n")


def is_s3(uri: str) -> bool:
    return urlparse(uri).scheme in S3_SCHEMES


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(parsed.path if parsed.scheme == "file" else uri)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


class Storage:
    """Read and write small objects addressed by URI (s3a://, s3://, file:// or a path)."""

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url
        self._client = None

    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 10, "mode": "adaptive"},
                s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            )
            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, config=config)
        return self._client

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        partial.replace(path)

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return local_path(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            response = self.s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            return any(item["Key"] == key for item in response.get("Contents", []))
        return local_path(uri).exists()

    def check_bucket(self, uri: str) -> None:
        """Raise a readable error when the bucket of an S3 URI is missing or not ours."""
        if not is_s3(uri):
            return
        from botocore.exceptions import ClientError, NoCredentialsError

        bucket, _ = split_s3(uri)
        try:
            self.s3.head_bucket(Bucket=bucket)
        except NoCredentialsError as exc:
            raise PermissionError(
                "no AWS credentials found: on EC2 attach the instance profile, "
                "locally set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise FileNotFoundError(f"bucket does not exist: s3://{bucket}") from exc
            if code in ("403", "AccessDenied"):
                raise PermissionError(f"access denied to bucket s3://{bucket}") from exc
            raise

    def check_writable(self, uri: str) -> None:
        """Write and delete a probe under ``uri``, so an unwritable output fails before any compute."""
        from botocore.exceptions import ClientError

        probe = join(uri, "_write_probe")
        try:
            self.write_bytes(probe, b"")
            self.delete(probe)
        except OSError as exc:
            raise PermissionError(f"output location {uri} is not writable: {exc.strerror or exc}") from exc
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown error")
            raise PermissionError(f"output location {uri} is not writable: {code}") from exc

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    def _pages(self, uri: str, **options):
        """The LIST pages of every key under the S3 folder ``uri``, with its bucket and key prefix."""
        bucket, prefix = split_s3(join(uri, ""))
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, **options):
            yield bucket, prefix, page

    def list_dirs(self, uri: str) -> list[str]:
        """Names of the folders directly under ``uri``."""
        if is_s3(uri):
            return [
                common["Prefix"][len(prefix) :].rstrip("/")
                for _, prefix, page in self._pages(uri, Delimiter="/")
                for common in page.get("CommonPrefixes", [])
            ]
        path = local_path(uri)
        return sorted(child.name for child in path.iterdir() if child.is_dir()) if path.is_dir() else []

    def delete_tree(self, uri: str) -> None:
        if is_s3(uri):
            for bucket, _, page in self._pages(uri):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            return
        shutil.rmtree(local_path(uri), ignore_errors=True)

    def file_versions(self, uri: str) -> dict[str, tuple[int, int]]:
        """Every file under ``uri`` as {Spark path: (size in bytes, modification time in whole seconds)}.

        Paths are spelled as the binaryFile ``path`` column spells them. One LIST
        pass on S3 (1,000 keys per request); the same values the binaryFile scan
        records, so a file that did not change compares equal.
        """
        if is_s3(uri):
            scheme = urlparse(uri).scheme
            return {
                f"{scheme}://{bucket}/{item['Key']}": (item["Size"], int(item["LastModified"].timestamp()))
                for bucket, _, page in self._pages(uri)
                for item in page.get("Contents", [])
            }
        versions = {}
        for directory, _, names in os.walk(local_path(uri)):
            for name in names:
                path = os.path.abspath(os.path.join(directory, name))
                stat = os.stat(path)
                versions["file:" + path] = (stat.st_size, int(stat.st_mtime))
        return versions
