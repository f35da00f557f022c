"""Reads ahead of the CNN: in order, bounded, one GET per image, and a file's own problems as reasons."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from featurize import fetch
from featurize.fetch import FetchSettings, fetch_batches
from featurize.storage import Storage

from harness.s3proxy import faulty_s3


def fetch_all(files, settings, batch_size=8):
    return [item for batch in fetch_batches(files, settings, batch_size) for item in batch]


def test_reads_run_ahead_in_order_within_the_bounds(monkeypatch):
    active, peak, lock = 0, 0, threading.Lock()

    def slow_read(path, size, etag, settings):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with lock:
            active -= 1
        return path.encode()

    monkeypatch.setattr(fetch, "read_one", slow_read)
    files = [(f"p{i}", 100, "e") for i in range(200)]
    started = time.perf_counter()
    results = fetch_all(files, FetchSettings(max_in_flight=16, max_bytes_in_flight=10_000))
    elapsed = time.perf_counter() - started
    assert [r.data for r in results] == [f"p{i}".encode() for i in range(200)]
    assert 8 <= peak <= 16
    assert elapsed < 200 * 0.02 / 4, "reads overlap"


def test_a_batch_holds_its_bytes_until_the_next_batch_is_asked_for(monkeypatch):
    started = 0

    def read(path, size, etag, settings):
        nonlocal started
        started += 1
        return b"x" * size

    monkeypatch.setattr(fetch, "read_one", read)
    files = [(f"p{i}", 100, "e") for i in range(50)] + [("huge", 1000, "e")] + [(f"q{i}", 100, "e") for i in range(5)]
    released, sizes = 0, []
    for batch in fetch_batches(files, FetchSettings(max_in_flight=16, max_bytes_in_flight=300), batch_size=8):
        # Held now: this batch and the reads ahead of it, 300 bytes at most plus one file.
        held = sum(len(item.data) for item in batch) + 100 * (started - released - len(batch))
        assert held <= 300 + 1000
        sizes.append(len(batch))
        released += len(batch)
    assert released == len(files)
    assert max(sizes) == 3, "a batch ends once its own bytes reach the cap"


def test_one_get_per_image_and_a_files_own_problems_are_reasons(s3, bucket, moto_endpoint):
    storage = Storage(moto_endpoint)
    for name, body in {"a.jpg": b"aaa", "odd #1 %2F+ [x]?.jpg": b"bbb", "gone.jpg": b"c", "swapped.jpg": b"d"}.items():
        s3.put_object(Bucket=bucket, Key=f"images/{name}", Body=body)
    s3.put_object(Bucket=bucket, Key="images/empty.jpg", Body=b"")
    listing = storage.list_files(f"s3a://{bucket}/images/")
    s3.delete_object(Bucket=bucket, Key="images/gone.jpg")
    s3.put_object(Bucket=bucket, Key="images/swapped.jpg", Body=b"a new version")
    settings = FetchSettings(endpoint_url=moto_endpoint, max_file_bytes=2)
    results = {
        r.path.rsplit("/", 1)[-1]: (r.data, r.error and (str(r.error), r.error.retryable))
        for r in fetch_all([(f.path, f.size, f.etag) for f in listing], FetchSettings(moto_endpoint))
    }
    # Permanent: a rerun lists again, and a gone or replaced object is no longer this (path, ETag).
    assert results == {
        "a.jpg": (b"aaa", None),
        "odd #1 %2F+ [x]?.jpg": (b"bbb", None),
        "empty.jpg": (None, ("empty file (0 bytes)", False)),
        "gone.jpg": (None, ("deleted after it was listed", False)),
        "swapped.jpg": (None, (f"replaced after it was listed (ETag is no longer {listing[-1].etag})", False)),
    }
    [big] = fetch_all([(listing[0].path, 3, listing[0].etag)], settings)
    assert str(big.error) == "file too large: 3 bytes, limit is 2"


@pytest.mark.parametrize("name", ["new[1].jpg", "a b.jpg", "-dash.jpg", "100%.jpg", "été.jpg", "e\u0301te\u0301.jpg"])
def test_local_files_with_odd_names_are_read_as_listed(tmp_path, name):
    (tmp_path / name).write_bytes(b"xyz")
    [listed] = Storage().list_files(str(tmp_path))
    [result] = fetch_all([(listed.path, listed.size, listed.etag)], FetchSettings())
    assert (result.data, result.error) == (b"xyz", None)


def counting_requests_of_fetch(monkeypatch) -> Counter:
    """The requests fetch counts, by operation (the process-wide count may hold other threads' requests)."""
    counted: Counter[str] = Counter()
    monkeypatch.setattr(fetch, "count_request", lambda operation: counted.update([operation]))
    return counted


def test_throttled_and_dropped_reads_are_retried_and_every_attempt_is_counted(s3, bucket, moto_endpoint, monkeypatch):
    monkeypatch.setattr(fetch, "BACKOFF_BASE_SECONDS", 0.001)
    s3.put_object(Bucket=bucket, Key="images/a.jpg", Body=b"aaa")
    [listed] = Storage(moto_endpoint).list_files(f"s3a://{bucket}/images/")
    counted = counting_requests_of_fetch(monkeypatch)
    with faulty_s3(moto_endpoint, fault_rate=0.3) as (endpoint, proxy):
        results = fetch_all([(listed.path, listed.size, listed.etag)] * 40, FetchSettings(endpoint))
    assert [(r.data, r.error) for r in results] == [(b"aaa", None)] * 40
    faults = {outcome for (outcome, _), n in proxy.counts.items() if n}
    assert faults == {"forward", "slowdown", "drop"}
    # S3 bills every attempt: the job's count (for its cost) is the proxy's.
    assert counted["GetObject"] == sum(n for (_, method), n in proxy.counts.items() if method == "GET")


@pytest.mark.parametrize(("fault", "code"), [("slowdown", "SlowDown"), ("drop", "NoResponse")])
def test_a_read_that_fails_every_attempt_is_a_retryable_error_naming_why(
    s3, bucket, moto_endpoint, monkeypatch, fault, code
):
    monkeypatch.setattr(fetch, "BACKOFF_BASE_SECONDS", 0.001)
    s3.put_object(Bucket=bucket, Key="images/a.jpg", Body=b"aaa")
    [listed] = Storage(moto_endpoint).list_files(f"s3a://{bucket}/images/")
    counted = counting_requests_of_fetch(monkeypatch)
    with faulty_s3(moto_endpoint, fault_rate=1.0) as (endpoint, proxy):
        proxy.decide = lambda method: fault
        [result] = fetch_all([(listed.path, listed.size, listed.etag)], FetchSettings(endpoint))
    assert (result.data, result.error.code, result.error.retryable) == (None, code, True)
    assert str(result.error).startswith(f"the read failed after {fetch.READ_ATTEMPTS} attempts: ")
    assert counted == {"GetObject": fetch.READ_ATTEMPTS}


@pytest.mark.parametrize(
    ("bucket", "endpoint", "virtual_hosted"),
    [("fruits", None, "true"), ("fruits.example.com", None, "false"), ("fruits", "http://127.0.0.1:9", "false")],
)
def test_the_image_store_addresses_buckets_as_boto3_does(monkeypatch, bucket, endpoint, virtual_hosted):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    config = fetch.image_store(bucket, FetchSettings(endpoint, region="eu-central-1")).config
    assert (config["virtual_hosted_style_request"], config["region"]) == (virtual_hosted, "eu-central-1")


def test_no_credentials_is_an_error_per_image_found_once_per_process(monkeypatch):
    from obstore.auth import boto3 as obstore_boto3

    searched = []

    def no_credentials(session, **_):
        searched.append(session)
        raise ValueError("Received None from session.get_credentials")

    monkeypatch.setattr(obstore_boto3, "Boto3CredentialProvider", no_credentials)
    files = [(f"s3a://nocreds-bucket/images/{i}.jpg", 10, '"e"') for i in range(3)]
    results = fetch_all(files, FetchSettings("http://127.0.0.1:9", region="eu-west-1"))
    assert [(r.data, r.error.code, r.error.retryable) for r in results] == [(None, "NoCredentials", True)] * 3
    assert len(searched) == 1
