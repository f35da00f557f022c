"""Image bytes for the CNN: one GET per image, many in flight, ahead of the model, in input order.

Spark's binaryFile reader stats and opens each file before reading it (about
3 requests per image on S3) and reads one file at a time per task, so on real
S3 latency a task waits on the network most of the time. Here a task knows
each file's size and ETag from the driver's single listing, so it issues
plain GETs (If-Match the listed ETag) from a pool of threads, keeping up to
``max_in_flight`` requests and ``max_bytes_in_flight`` bytes ahead of the
consumer. Runs of the pandas UDF in Python workers; no Spark here.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from featurize.storage import error_code, is_s3, local_etag, local_path, s3_client, split_s3

# Errors of the connection or the stream (not of the request): retried here,
# since botocore retries a request only until its response headers arrive.
TRANSIENT_READ_ERRORS = ("ResponseStreamingError", "IncompleteReadError", "ReadTimeoutError", "ProtocolError")
READ_ATTEMPTS = 5


class ReadError(Exception):
    """This file cannot be read as it was listed; its message is the user-readable reason."""


@dataclass(frozen=True)
class FetchSettings:
    endpoint_url: str | None = None
    max_in_flight: int = 32
    max_bytes_in_flight: int = 64 * 1024 * 1024
    # Larger files are refused from their listed size, without a request.
    max_file_bytes: int = 256 * 1024 * 1024


@dataclass(frozen=True)
class Fetched:
    path: str
    data: bytes | None
    error: str | None


def read_s3(path: str, etag: str, settings: FetchSettings) -> bytes:
    from botocore.exceptions import ClientError

    bucket, key = split_s3(path)
    client = s3_client(settings.endpoint_url)
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return client.get_object(Bucket=bucket, Key=key, IfMatch=etag)["Body"].read()
        except ClientError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "404"):
                raise ReadError("deleted after it was listed") from exc
            if code in ("PreconditionFailed", "412"):
                raise ReadError(f"replaced after it was listed (ETag is no longer {etag})") from exc
            if code in ("AccessDenied", "403"):
                raise ReadError("access denied to this object") from exc
            raise
        except Exception as exc:
            if type(exc).__name__ not in TRANSIENT_READ_ERRORS or attempt == READ_ATTEMPTS:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def read_local(path: str, etag: str) -> bytes:
    file = local_path(path)
    try:
        if local_etag(os.stat(file)) != etag:
            raise ReadError("changed after it was listed")
        return file.read_bytes()
    except FileNotFoundError as exc:
        raise ReadError("deleted after it was listed") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise ReadError(f"cannot be read: {exc.strerror}") from exc


def read_one(path: str, size: int, etag: str, *, settings: FetchSettings) -> bytes:
    if size == 0:
        raise ReadError("empty file (0 bytes)")
    if size > settings.max_file_bytes:
        raise ReadError(f"file too large: {size} bytes, limit is {settings.max_file_bytes}")
    return read_s3(path, etag, settings) if is_s3(path) else read_local(path, etag)


def fetch_ahead(files: Iterable[tuple[str, int, str]], settings: FetchSettings) -> Iterator[Fetched]:
    """Yield each ``(path, size, etag)`` as Fetched, in order, with reads running ahead of the consumer.

    A file's own problems (gone, replaced, empty, too large, denied) come back
    as Fetched.error; anything else (S3 unreachable after retries) raises, and
    Spark retries the task.
    """
    pending: deque[tuple[str, int, Future]] = deque()
    in_flight_bytes = 0
    source = iter(files)
    exhausted = False
    with ThreadPoolExecutor(max_workers=settings.max_in_flight, thread_name_prefix="fetch") as pool:
        while pending or not exhausted:
            # At least one read is always in flight, however large its file.
            while (
                not exhausted
                and len(pending) < settings.max_in_flight
                and (not pending or in_flight_bytes < settings.max_bytes_in_flight)
            ):
                following = next(source, None)
                if following is None:
                    exhausted = True
                    break
                path, size, etag = following
                pending.append((path, size, pool.submit(read_one, path, size, etag, settings=settings)))
                in_flight_bytes += size
            if not pending:
                break
            path, size, future = pending.popleft()
            in_flight_bytes -= size
            try:
                yield Fetched(path, future.result(), None)
            except ReadError as exc:
                yield Fetched(path, None, str(exc))
