"""The commit protocol of a run: chunks committed as tasks go, reruns that redo only what is not committed.

A task featurizes its images in chunks of ``commit_every``. Each chunk is
written as immutable objects, data first and its commit record last:

    RUN/features/part-FP-HASH.parquet   features of the chunk's decoded images
    RUN/errors/part-FP-HASH.parquet     error rows of the others (if any)
    RUN/_commits/FP-HASH.json           the commit: which parts, which (path, ETag) rows

FP fingerprints the feature settings (weights checksum, image size, decode
limits, job version) and HASH the chunk's rows, so a retried task rewrites
the same names with the same content. A single S3 PUT is atomic, so a record
that exists names complete parts: a crash loses only chunks not yet
committed. A rerun lists the records, keeps rows whose path and ETag still
match the input listing under the current fingerprint, rewrites chunks that
hold stale rows (compaction), and featurizes the rest. Parts no record names
are leftovers of a crash and are removed once the run is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import platform
import pwd
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pandas as pd

from featurize.storage import ListedFile, Storage, join

log = logging.getLogger("featurize")

COMMITS_DIR = "_commits"
LOCK_FILE = "_lock"
FEATURE_COLUMNS = ["path", "label", "features", "size_bytes", "etag", "modified"]
ERROR_COLUMNS = ["path", "label", "stage", "reason", "size_bytes", "etag", "modified"]


class LockHeldError(RuntimeError):
    """Another run holds the run id."""


def rows_hash(rows: Sequence[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for path, etag in rows:
        digest.update(f"{path}\t{etag}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Commit:
    """One committed chunk, as its record describes it."""

    uri: str
    fingerprint: str
    features: str | None
    errors: str | None
    rows: tuple[tuple[str, str, str], ...]  # (path, etag, "features" | "errors")

    @property
    def parts(self) -> list[str]:
        return [uri for uri in (self.features, self.errors) if uri]


def _parquet_bytes(frame: pd.DataFrame, columns: list[str]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema_types = {
        "path": pa.string(),
        "label": pa.string(),
        "features": pa.list_(pa.float32()),
        "stage": pa.string(),
        "reason": pa.string(),
        "size_bytes": pa.int64(),
        "etag": pa.string(),
        "modified": pa.timestamp("us", tz="UTC"),
    }
    schema = pa.schema([(name, schema_types[name]) for name in columns])
    table = pa.Table.from_pandas(frame[columns], schema=schema, preserve_index=False)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_chunk(storage: Storage, run_uri: str, *, fingerprint: str, rows: pd.DataFrame) -> Commit:
    """Write one chunk's parts, then its record; ``rows`` has FEATURE_COLUMNS plus stage/reason (NULL when featurized).

    The accounting is checked before the record is written: every input row
    is in exactly one of the two parts.
    """
    failed = rows["reason"].notna()
    featurized, errors = rows[~failed], rows[failed]
    if len(featurized) + len(errors) != len(rows) or rows["path"].duplicated().any():
        raise RuntimeError(f"chunk accounting failed: {len(rows)} rows, {len(featurized)} + {len(errors)} written")
    name = f"{fingerprint}-{rows_hash(list(zip(rows['path'], rows['etag'], strict=True)))}"
    part_uris = {}
    for kind, frame, columns in (("features", featurized, FEATURE_COLUMNS), ("errors", errors, ERROR_COLUMNS)):
        if len(frame):
            part_uris[kind] = join(run_uri, kind, f"part-{name}.parquet")
            storage.write_bytes(part_uris[kind], _parquet_bytes(frame, columns))
    commit = Commit(
        uri=join(run_uri, COMMITS_DIR, f"{name}.json"),
        fingerprint=fingerprint,
        features=part_uris.get("features"),
        errors=part_uris.get("errors"),
        rows=tuple(
            (path, etag, "errors" if bad else "features")
            for path, etag, bad in zip(rows["path"], rows["etag"], failed, strict=True)
        ),
    )
    record = {"fingerprint": fingerprint, "features": commit.features, "errors": commit.errors, "rows": commit.rows}
    storage.write_bytes(commit.uri, json.dumps(record).encode(), "application/json")
    return commit


def read_commits(storage: Storage, run_uri: str) -> list[Commit]:
    """Every commit record of the run: one LIST per 1,000 records, one GET per record."""
    commits = []
    for listed in storage.list_files(join(run_uri, COMMITS_DIR)):
        if not listed.path.endswith(".json"):
            continue
        record = json.loads(storage.read_bytes(listed.path))
        rows = tuple(tuple(row) for row in record["rows"])
        commits.append(Commit(listed.path, record["fingerprint"], record["features"], record["errors"], rows))
    return commits


@dataclass
class Plan:
    """What a run must do, given the input listing and the commits found."""

    todo: list[ListedFile]
    live: list[Commit] = field(default_factory=list)
    # Commits with some live rows and some stale or duplicated ones: rewritten with the live rows only.
    compact: list[tuple[Commit, frozenset[str]]] = field(default_factory=list)
    # Commits with no live row left (other settings, images changed or removed): deleted.
    drop: list[Commit] = field(default_factory=list)
    missing: list[Commit] = field(default_factory=list)
    reused: int = 0

    @property
    def up_to_date(self) -> bool:
        return not (self.todo or self.compact or self.drop or self.missing)


def plan_run(images: Sequence[ListedFile], commits: Sequence[Commit], *, fingerprint: str, parts: set[str]) -> Plan:
    """An image is done when a commit of this fingerprint holds its path with its current ETag.

    Each (path, ETag) counts once, in the first commit (by record name) that
    holds it; a commit whose parts went missing is reported and its images redone.
    """
    current = {image.path: image.etag for image in images}
    assigned: set[str] = set()
    plan = Plan(todo=[])
    for commit in sorted(commits, key=lambda c: c.uri):
        if any(part not in parts for part in commit.parts):
            plan.missing.append(commit)
            continue
        if commit.fingerprint != fingerprint:
            plan.drop.append(commit)
            continue
        kept = {path for path, etag, _ in commit.rows if current.get(path) == etag and path not in assigned}
        assigned |= kept
        if len(kept) == len(commit.rows):
            plan.live.append(commit)
        elif kept:
            plan.compact.append((commit, frozenset(kept)))
        else:
            plan.drop.append(commit)
    plan.todo = [image for image in images if image.path not in assigned]
    plan.reused = len(assigned)
    return plan


def compact(storage: Storage, run_uri: str, *, commit: Commit, kept: frozenset[str]) -> Commit:
    """Rewrite a commit with only its ``kept`` rows, then delete the old record and parts."""
    import pyarrow.parquet as pq

    frames = []
    for part in commit.parts:
        frame = pq.read_table(io.BytesIO(storage.read_bytes(part))).to_pandas()
        for column in set(FEATURE_COLUMNS + ERROR_COLUMNS) - set(frame.columns):
            frame[column] = None
        frames.append(frame[frame["path"].isin(kept)])
    rewritten = write_chunk(storage, run_uri, fingerprint=commit.fingerprint, rows=pd.concat(frames, ignore_index=True))
    if rewritten.uri != commit.uri:
        storage.delete(commit.uri)
        storage.delete_many([part for part in commit.parts if part not in rewritten.parts])
    return rewritten


def remove_leftovers(storage: Storage, run_uri: str, *, live: Sequence[Commit], obsolete: Sequence[Commit]) -> int:
    """Delete obsolete records, then every part no live record names (crashed or superseded chunks)."""
    storage.delete_many([commit.uri for commit in obsolete])
    named = {part for commit in live for part in commit.parts}
    orphans = [
        listed.path
        for kind in ("features", "errors")
        for listed in storage.list_files(join(run_uri, kind))
        if listed.path not in named
    ]
    storage.delete_many(orphans)
    return len(orphans)


def _process_alive(pid) -> bool:
    if not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """One writer per run id: a lock object created with a conditional write.

    S3 guarantees that of concurrent PUTs with If-None-Match: * on one key,
    exactly one succeeds (the others get 412 or 409), and reads after a write
    are strongly consistent, so two runs can never both believe they hold the
    lock. A lock left by a crashed run is taken over at once from the same
    host (its process is gone), expires after ``ttl`` elsewhere, and
    ``--break-lock`` takes it at once; a takeover is itself a conditional
    write on the lock's ETag, so two takers cannot both win.
    """

    def __init__(self, storage: Storage, run_uri: str, *, ttl: timedelta, break_lock: bool = False):
        self.storage, self.uri, self.ttl, self.break_lock = storage, join(run_uri, LOCK_FILE), ttl, break_lock
        self.etag: str | None = None

    def _body(self) -> bytes:
        now = datetime.now(timezone.utc)
        holder = f"{pwd.getpwuid(os.geteuid()).pw_name}@{platform.node()} pid {os.getpid()}"
        return json.dumps(
            {
                "holder": holder,
                "host": platform.node(),
                "pid": os.getpid(),
                "acquired_at": now.isoformat(),
                "expires_at": (now + self.ttl).isoformat(),
            }
        ).encode()

    def acquire(self) -> None:
        self.etag = self.storage.create(self.uri, self._body())
        if self.etag:
            return
        current_etag = self.storage.etag(self.uri)
        held = json.loads(self.storage.read_if_exists(self.uri) or b"{}")
        expired = datetime.fromisoformat(held.get("expires_at", "1970-01-01T00:00:00+00:00")) < datetime.now(
            timezone.utc
        )
        # A holder on this host whose process is gone crashed: its lock needs no waiting.
        expired = expired or (held.get("host") == platform.node() and not _process_alive(held.get("pid")))
        if not (expired or self.break_lock):
            raise LockHeldError(
                f"the run is being written by {held.get('holder', 'another run')} since {held.get('acquired_at')} "
                f"(lock {self.uri}, expires {held.get('expires_at')}). Wait for it to finish, use another "
                "--run-id, or if that run is dead, rerun with --break-lock."
            )
        log.warning("taking over the %s lock of %s at %s", "expired" if expired else "broken", held, self.uri)
        self.etag = self.storage.create(self.uri, self._body(), replacing=current_etag) if current_etag else None
        if not self.etag:
            raise LockHeldError(f"another run took the lock {self.uri} at the same time; try again")

    def release(self) -> None:
        if self.etag and self.storage.etag(self.uri) == self.etag:
            self.storage.delete(self.uri)
        self.etag = None
