"""Image bytes for the CNN: one GET per image, many in flight, ahead of the model, in input order.

Spark's binaryFile reader stats and opens each file before reading it (about
3 requests per image on S3) and reads one file at a time per task, so on real
S3 latency a task waits on the network most of the time. Here a task knows
each file's size and ETag from the driver's single listing, so it issues
plain GETs (If-Match the listed ETag) from a pool of threads, keeping up to
``max_in_flight`` requests ahead of the consumer and at most
``max_bytes_in_flight`` bytes (plus one file) in memory. Runs of the pandas UDF in Python workers; no Spark here.

The GETs go through obstore (Rust's object_store) rather than boto3: about
0.5 ms of CPU per GET against 1.7 for botocore, spent outside the GIL that
the same worker's decoding needs (docs/performance.md). Credentials come
from the same botocore session as the job's boto3 client (environment,
profile, instance profile).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from featurize.errors import PermanentReadError, RecordedError, RetryableReadError
from featurize.storage import botocore_session, count_request, is_s3, local_etag, local_path, split_s3

# Attempts per GET, as the boto3 client's (featurize.storage): throttling, 5xx, dropped connections, timeouts.
READ_ATTEMPTS = 10
# Full-jitter exponential backoff between attempts, as botocore's: up to BASE * 2**attempt seconds, capped.
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 20.0
# What the user can do about an image that failed this time, by error code (docs/job.md, "Faults").
READ_HINTS = {
    "AccessDenied": "the instance profile grants s3:GetObject under the images prefix of the bucket only: "
    "check the prefix and the policy (docs/aws.md); right after provisioning, IAM may still be propagating",
    "InvalidObjectState": "the object is archived (Glacier or Deep Archive): restore it "
    "(aws s3api restore-object) or copy it back to STANDARD",
    "SlowDown": "S3 throttled the reads past every retry: lower --fetch-concurrency",
    "ExpiredToken": "the credentials expired during the read",
    "NoCredentials": "no AWS credentials: attach the instance profile, or set AWS_PROFILE",
    "WorkerDied": "a rerun tries it again; if its worker dies again, the file crashes the decoder or needs "
    "more memory than the host has: re-encode it, or remove it from the images prefix",
}
_STATUS = re.compile(r"status code: (\d{3})")
_AWS_CODE = re.compile(r"<Code>([^<]+)</Code>")


@dataclass(frozen=True)
class FetchSettings:
    endpoint_url: str | None = None
    # The images bucket's region (the driver reads it from HeadBucket): obstore signs for it and does not
    # follow S3's redirects to another region as boto3 does.
    region: str | None = None
    max_in_flight: int = 32
    max_bytes_in_flight: int = 64 * 1024 * 1024
    # Larger files are refused from their listed size, without a request.
    max_file_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    path: str
    data: bytes | None
    error: RecordedError | None = None


_STORES: dict[tuple[str | None, str | None, str], object] = {}
_STORES_LOCK = threading.Lock()


def image_store(bucket: str, settings: FetchSettings):
    """obstore's client of ``bucket``: one per process, shared by the read-ahead threads; None without credentials.

    It sends one HTTP request per call (no retries of its own): the retries
    are read_s3's, so that each is counted, as S3 bills it, and backs off alike.
    Finding no credentials is kept too, as the boto3 client keeps them: the
    credential chain (the metadata service's timeouts included) runs once per
    process, not once per image.
    """
    key = (settings.endpoint_url, settings.region, bucket)
    with _STORES_LOCK:
        if key not in _STORES:
            from obstore.auth.boto3 import Boto3CredentialProvider
            from obstore.store import S3Store

            endpoint = settings.endpoint_url
            session = botocore_session(endpoint)
            try:
                credentials = Boto3CredentialProvider(session, ttl=timedelta(minutes=5))
            except ValueError:  # the chain found none
                _STORES[key] = None
                return None
            _STORES[key] = S3Store(
                bucket,
                region=settings.region or session.get_config_variable("region") or "us-east-1",
                # Virtual-hosted on AWS, as boto3 does, except for a bucket whose name has dots (S3's TLS
                # certificate covers one label); path-style on a custom endpoint (moto, MinIO).
                virtual_hosted_style_request=not endpoint and "." not in bucket,
                **({"endpoint": endpoint} if endpoint else {}),
                client_options={
                    "allow_http": bool(endpoint and endpoint.startswith("http://")),
                    "connect_timeout": "10s",
                    "timeout": "60s",
                },
                retry_config={"max_retries": 0},
                # botocore refreshes instance-profile credentials 10-15 min before they expire, so
                # credentials kept 5 min by obstore (the ttl above) are never used expired.
                credential_provider=credentials,
            )
        return _STORES[key]


def _failure(exc: Exception) -> tuple[int | None, str]:
    """The HTTP status and the S3 error code of a failed obstore request."""
    text = str(exc)
    status, code = _STATUS.search(text), _AWS_CODE.search(text)
    if not status:
        return None, "NoResponse"  # dropped, reset or timed out before any HTTP status
    return int(status.group(1)), code.group(1) if code else f"HTTP{status.group(1)}"


def _transient(status: int | None) -> bool:
    """Throttling, S3's own errors, and requests that got no status at all (dropped, reset, timed out)."""
    return status is None or status in (408, 429) or status >= 500


def read_s3(path: str, etag: str, settings: FetchSettings) -> bytes:
    import obstore
    from obstore.exceptions import PreconditionError

    bucket, key = split_s3(path)
    store = image_store(bucket, settings)
    if store is None:
        raise RetryableReadError("no AWS credentials for the read", code="NoCredentials")
    for attempt in range(1, READ_ATTEMPTS + 1):
        count_request("GetObject")
        try:
            return bytes(obstore.get(store, key, options={"if_match": etag}).bytes())
        # Gone or replaced: the next listing no longer shows this (path, ETag), so the rerun never asks again.
        except FileNotFoundError as exc:
            raise PermanentReadError("deleted after it was listed", code="NoSuchKey") from exc
        except PreconditionError as exc:
            raise PermanentReadError(
                f"replaced after it was listed (ETag is no longer {etag})", code="PreconditionFailed"
            ) from exc
        except Exception as exc:
            status, code = _failure(exc)
            if not _transient(status):
                reason = {
                    "AccessDenied": "access denied to this object",
                    "InvalidObjectState": "archived: not readable until restored",
                }.get(code, "S3 refused the read")
                raise RetryableReadError(f"{reason} ({code})", code=code) from exc
            if attempt == READ_ATTEMPTS:
                detail = f"{code} (HTTP {status})" if status else str(exc).split(" - ", 1)[-1].split("\n", 1)[0][:200]
                raise RetryableReadError(f"the read failed after {attempt} attempts: {detail}", code=code) from exc
            time.sleep(random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt)))
    raise AssertionError("unreachable")


def read_local(path: str, etag: str) -> bytes:
    file = local_path(path)
    try:
        if local_etag(os.stat(file)) != etag:
            raise PermanentReadError("changed after it was listed")
        return file.read_bytes()
    except FileNotFoundError as exc:
        raise PermanentReadError("deleted after it was listed") from exc
    except IsADirectoryError as exc:
        raise PermanentReadError(f"cannot be read: {exc.strerror}") from exc
    except OSError as exc:
        raise RetryableReadError(f"cannot be read: {exc.strerror}", code=type(exc).__name__) from exc


def read_one(path: str, size: int, etag: str, *, settings: FetchSettings) -> bytes:
    if path.endswith("/"):
        raise PermanentReadError(f"{size} bytes stored under a folder key (ends with /): rename the object")
    if size == 0:
        raise PermanentReadError("empty file (0 bytes)")
    if size > settings.max_file_bytes:
        raise PermanentReadError(f"file too large: {size} bytes, limit is {settings.max_file_bytes}")
    return read_s3(path, etag, settings) if is_s3(path) else read_local(path, etag)


def fetch_batches(
    files: Iterable[tuple[str, int, str]], settings: FetchSettings, batch_size: int
) -> Iterator[list[Fetched]]:
    """Yield each ``(path, size, etag)`` as Fetched, in order and in batches, with reads running ahead.

    The bytes of a batch count against ``max_bytes_in_flight`` until the
    consumer asks for the next batch (it must drop its references by then),
    so a task holds at most the cap plus one file: at least one read is
    always allowed, however large its file, and a batch ends early once its
    own bytes reach the cap. Every problem of a read (gone, replaced, empty,
    too large, denied, archived, S3 unreachable after retries) comes back as
    Fetched.error: no object fails the task.
    """
    pending: deque[tuple[str, int, Future]] = deque()
    held_bytes = 0  # of the reads in flight and of the batch being built or consumed
    source = iter(files)
    exhausted = False
    with ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="fetch") as pool:

        def read_ahead() -> None:
            nonlocal held_bytes, exhausted
            while not exhausted and len(pending) < settings.max_in_flight and held_bytes < settings.max_bytes_in_flight:
                following = next(source, None)
                if following is None:
                    exhausted = True
                    return
                path, size, etag = following
                pending.append((path, size, pool.submit(read_one, path, size, etag, settings=settings)))
                held_bytes += size

        while True:
            batch: list[Fetched] = []
            batch_bytes = 0
            read_ahead()
            while pending and len(batch) < batch_size and batch_bytes < settings.max_bytes_in_flight:
                path, size, future = pending.popleft()
                try:
                    batch.append(Fetched(path, future.result()))
                except RecordedError as exc:
                    batch.append(Fetched(path, None, exc))
                batch_bytes += size
                read_ahead()
            if not batch:
                return
            yield batch
            del batch
            held_bytes -= batch_bytes
