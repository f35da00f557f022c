"""Objects addressed by URI (s3a://, s3://, file:// or a path), on S3 through boto3 or on a local disk.

The job reads and writes its data itself rather than through Hadoop's S3A
filesystem: one GET per image, one PUT per committed chunk, no renames. boto3
follows the same credential chain as s3a (environment or profile locally,
instance profile through IMDS on EC2) and uses the endpoint of
``spark.hadoop.fs.s3a.endpoint`` when one is set (moto in tests).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from featurize.errors import StorageError

S3_SCHEMES = ("s3", "s3a", "s3n")
# A conditional PUT that lost (412), or raced another conditional PUT on the same key (409).
CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def is_s3(uri: str) -> bool:
    return urlparse(uri).scheme in S3_SCHEMES


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(part.strip("/") for part in parts)])


def local_path(uri: str) -> Path:
    """``file:///a%20b`` (a URI, percent-encoded), ``file:/a b`` (Spark's spelling, raw) or a plain path."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if uri.startswith("file:"):
        return Path("/" + uri[len("file:") :].lstrip("/"))
    return Path(uri).absolute()


def split_s3(uri: str) -> tuple[str, str]:
    """Bucket and key, the key taken verbatim: '#', '?', '%' and spaces are part of S3 keys, not URL syntax."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def error_code(exc: Exception) -> str:
    return getattr(exc, "response", {}).get("Error", {}).get("Code", "")


@dataclass(frozen=True)
class ListedFile:
    """One object as a single LIST call describes it: its ETag identifies the content at no extra cost."""

    path: str
    size: int
    etag: str
    modified: datetime


@dataclass(frozen=True)
class StoredObject:
    data: bytes
    etag: str
    modified: datetime
    # The time of the read by the store's clock: S3's Date header, or this host's clock for a local file.
    now: datetime


_CLIENTS: dict[str | None, object] = {}
_CLIENTS_LOCK = threading.Lock()

# Every S3 request this process sent, retries included (each is billed), by operation name.
_REQUESTS: Counter[str] = Counter()
_REQUESTS_LOCK = threading.Lock()


def count_request(operation: str) -> None:
    """Count one request sent (retries are requests too) by operation name, e.g. GetObject."""
    with _REQUESTS_LOCK:
        _REQUESTS[operation] += 1


def _count_request(event_name: str, **_) -> None:
    count_request(event_name.rsplit(".", 1)[-1])


def request_counts() -> dict[str, int]:
    """The S3 requests this process has sent so far, by operation (GetObject, PutObject, ...)."""
    with _REQUESTS_LOCK:
        return dict(_REQUESTS)


def requests_since(before: dict[str, int]) -> dict[str, int]:
    """The requests sent since ``before`` (a result of request_counts), by operation."""
    changed = {operation: count - before.get(operation, 0) for operation, count in request_counts().items()}
    return {operation: count for operation, count in changed.items() if count}


_SESSIONS: dict[str | None, object] = {}


def botocore_session(endpoint_url: str | None):
    """One botocore session per process and endpoint: the credentials of boto3 and of the image reads (fetch.py).

    Credentials are resolved once, here, before any thread uses them: on EC2
    they come from the instance metadata service, which throttles bursts, and
    botocore's default there is one attempt with a 1 s timeout.
    """
    with _CLIENTS_LOCK:
        if endpoint_url not in _SESSIONS:
            import botocore.session

            session = botocore.session.get_session()
            session.set_config_variable("metadata_service_timeout", 5)
            session.set_config_variable("metadata_service_num_attempts", 5)
            session.get_credentials()
            _SESSIONS[endpoint_url] = session
        return _SESSIONS[endpoint_url]


def s3_client(endpoint_url: str | None):
    """One boto3 client per process and endpoint, shared by threads (clients are thread-safe)."""
    session = botocore_session(endpoint_url)
    with _CLIENTS_LOCK:
        if endpoint_url not in _CLIENTS:
            from botocore.config import Config

            config = Config(
                retries={"max_attempts": 10, "mode": "adaptive"},
                max_pool_connections=64,
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            )
            client = session.create_client("s3", endpoint_url=endpoint_url, config=config)
            client.meta.events.register("before-send.s3", _count_request)
            _CLIENTS[endpoint_url] = client
        return _CLIENTS[endpoint_url]


class Storage:
    """Read, write, list and delete objects by URI."""

    def __init__(self, endpoint_url: str | None = None):
        self.endpoint_url = endpoint_url

    @property
    def s3(self):
        return s3_client(self.endpoint_url)

    def write_bytes(self, uri: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    def create(self, uri: str, data: bytes, replacing: str | None = None) -> str | None:
        """Write ``uri`` only if it does not exist (or, with ``replacing``, only if its ETag is still that).

        On S3 this is a conditional PUT (If-None-Match / If-Match), which S3
        guarantees to let exactly one of concurrent writers through. Returns
        the new ETag, or None when another writer got there first.
        """
        if is_s3(uri):
            bucket, key = split_s3(uri)
            condition = {"IfMatch": replacing} if replacing else {"IfNoneMatch": "*"}
            try:
                return self.s3.put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
            except Exception as exc:
                if error_code(exc) in CONDITION_FAILED:
                    return None
                raise
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        if replacing:
            return self._replace_local(path, data, replacing)
        try:
            with open(path, "xb") as stream:
                stream.write(data)
        except FileExistsError:
            return None
        return self.etag(uri)

    @staticmethod
    def _replace_local(path: Path, data: bytes, replacing: str) -> str | None:
        """Compare-and-swap on a local file: the check and the rename happen under an exclusive flock."""
        import fcntl

        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(path.with_name(f".{path.name}.guard"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            try:
                current = local_etag(os.stat(path))
            except FileNotFoundError:
                return None
            if current != replacing:
                return None
            partial.write_bytes(data)
            os.replace(partial, path)
            return local_etag(os.stat(path))

    def read_versioned(self, uri: str) -> StoredObject | None:
        """The object with its ETag and modification time, and the time now by the same clock (S3's on S3)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                response = self.s3.get_object(Bucket=bucket, Key=key)
            except Exception as exc:
                if error_code(exc) in ("NoSuchKey", "404"):
                    return None
                raise
            from email.utils import parsedate_to_datetime

            now = parsedate_to_datetime(response["ResponseMetadata"]["HTTPHeaders"]["date"])
            return StoredObject(response["Body"].read(), response["ETag"], response["LastModified"], now)
        path = local_path(uri)
        try:
            data, stat = path.read_bytes(), os.stat(path)
        except FileNotFoundError:
            return None
        modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
        return StoredObject(data, local_etag(stat), modified, datetime.now(timezone.utc))

    def etag(self, uri: str) -> str | None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                return self.s3.head_object(Bucket=bucket, Key=key)["ETag"]
            except Exception as exc:
                if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        try:
            return local_etag(os.stat(local_path(uri)))
        except FileNotFoundError:
            return None

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return local_path(uri).read_bytes()

    def read_if_exists(self, uri: str) -> bytes | None:
        try:
            return self.read_bytes(uri)
        except FileNotFoundError:
            return None
        except Exception as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise

    def check_bucket(self, uri: str) -> str | None:
        """The region of an S3 URI's bucket (None for a local path); a readable error if it is missing or not ours."""
        if not is_s3(uri):
            return None
        from botocore.exceptions import ClientError, NoCredentialsError

        bucket, _ = split_s3(uri)
        try:
            return self.s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
        except NoCredentialsError as exc:
            raise StorageError(
                "no AWS credentials found: on EC2 attach the instance profile, "
                "locally set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
            ) from exc
        except ClientError as exc:
            code = error_code(exc)
            if code in ("404", "NoSuchBucket"):
                raise StorageError(f"bucket does not exist: s3://{bucket}") from exc
            if code in ("403", "AccessDenied"):
                raise StorageError(
                    f"access denied to bucket s3://{bucket}: HeadBucket needs s3:ListBucket on it "
                    "(the aws_infra host policy grants it)"
                ) from exc
            raise

    def check_writable(self, uri: str) -> None:
        """Write and delete a probe under ``uri``, so an unwritable output fails before any compute."""
        from botocore.exceptions import ClientError

        probe = join(uri, "_write_probe")
        for action, step in (
            ("s3:PutObject", lambda: self.write_bytes(probe, b"")),
            ("s3:DeleteObject", lambda: self.delete(probe)),
        ):
            try:
                step()
            except OSError as exc:
                raise StorageError(f"output location {uri} is not writable: {exc.strerror or exc}") from exc
            except ClientError as exc:
                code = error_code(exc) or str(exc)
                if code in ("403", "AccessDenied"):
                    raise StorageError(
                        f"output location {uri} is not writable: AccessDenied on {action} of {probe}; the job needs "
                        "s3:PutObject and s3:DeleteObject under the runs prefix (the aws_infra host policy grants both)"
                    ) from exc
                raise StorageError(f"output location {uri} is not writable: {code}") from exc

    def delete(self, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self.s3.delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    def delete_many(self, uris: list[str]) -> None:
        """Delete objects, up to 1,000 per request on S3."""
        s3_uris = [uri for uri in uris if is_s3(uri)]
        for uri in uris:
            if not is_s3(uri):
                self.delete(uri)
        for start in range(0, len(s3_uris), 1000):
            chunk = [split_s3(uri) for uri in s3_uris[start : start + 1000]]
            objects = [{"Key": key} for _, key in chunk]
            response = self.s3.delete_objects(Bucket=chunk[0][0], Delete={"Objects": objects, "Quiet": True})
            # DeleteObjects answers 200 even when some keys could not be deleted: each is in Errors.
            if failed := response.get("Errors"):
                raise StorageError(
                    f"{len(failed)} of {len(objects)} objects could not be deleted in s3://{chunk[0][0]}/, "
                    f"the first {failed[0].get('Key')}: {failed[0].get('Code')} {failed[0].get('Message', '')}"
                )

    def list_files(self, uri: str) -> list[ListedFile]:
        """Every file under the folder ``uri``, recursively, sorted by path: one LIST request per 1,000 on S3.

        Paths keep the URI's scheme (``s3a://bucket/key``) or are spelled
        ``file:/abs/path`` for local files, as Spark spells them.
        """
        if is_s3(uri):
            return sorted(self._list_s3(uri), key=lambda file: file.path)
        return sorted(self._list_local(uri), key=lambda file: file.path)

    def _list_s3(self, uri: str) -> Iterator[ListedFile]:
        scheme = urlparse(uri).scheme
        bucket, prefix = split_s3(join(uri, ""))
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith("/") and item["Size"] == 0:
                    continue  # a folder marker made by a console or s3a, not a file
                yield ListedFile(f"{scheme}://{bucket}/{item['Key']}", item["Size"], item["ETag"], item["LastModified"])

    def _list_local(self, uri: str) -> Iterator[ListedFile]:
        root = local_path(uri)
        if not root.exists():
            return
        for directory, _, names in os.walk(root):
            for name in names:
                path = os.path.abspath(os.path.join(directory, name))
                stat = os.stat(path)
                modified = datetime.fromtimestamp(stat.st_mtime, timezone.utc)
                yield ListedFile("file:" + path, stat.st_size, local_etag(stat), modified)


def local_etag(stat: os.stat_result) -> str:
    """What stands in for an ETag on a local disk: size and modification time in nanoseconds."""
    return f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
