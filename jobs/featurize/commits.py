"""The commit protocol of a run: chunks committed as tasks go, reruns that redo only what is not committed.

A task featurizes its images in chunks of ``commit_every``. Each chunk is
written as immutable objects, data first and its commit record last:

    RUN/features/part-FP-HASH-DATA.parquet   features of the chunk's decoded images
    RUN/errors/part-FP-HASH-DATA.parquet     error rows of the others (if any)
    RUN/_commits/FP-HASH.json                the commit: its parts and their sizes, its (path, ETag) rows

FP fingerprints the feature settings (weights checksum, image size, decode
limits, code and library versions), HASH the chunk's rows and DATA the
part's own content. A retried task whose outcome differs (an image read this
time that was denied before) writes parts under new names, so a record never
describes a part that was overwritten after it was written; it replaces the
record of the same rows, and the parts that record named become leftovers. A
single S3 PUT is atomic, so a record that exists names complete parts, which
the plan and the verification check by name and size: a crash loses only
chunks not yet committed. A rerun lists the records, keeps rows whose path and ETag still
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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from featurize.ec2 import imds_get
from featurize.errors import LockHeldError
from featurize.storage import ListedFile, Storage, join

log = logging.getLogger("featurize")

COMMITS_DIR = "_commits"
# Records of retried featurize tasks (featurize.pipeline.featurize_isolating), removed once the stage is done.
ATTEMPTS_DIR = "_attempts"
LOCK_FILE = "_lock"
FEATURE_COLUMNS = ["path", "label", "features", "size_bytes", "etag", "modified"]
ERROR_COLUMNS = ["path", "label", "stage", "reason", "code", "retryable", "size_bytes", "etag", "modified"]
# Kinds of a commit record's rows. A RETRY row is an error that a rerun tries
# again (errors.RetryableReadError); an ERRORS row is permanent for its ETag.
FEATURES, ERRORS, RETRY = "features", "errors", "retry"


def rows_hash(rows: Sequence[tuple[str, str]]) -> str:
    """A chunk's name from its (path, ETag) rows; JSON keeps keys holding tabs or newlines unambiguous."""
    return hashlib.sha256(json.dumps([list(row) for row in rows]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Commit:
    """One committed chunk, as its record describes it."""

    uri: str
    fingerprint: str
    features: str | None
    errors: str | None
    rows: tuple[tuple[str, str, str], ...]  # (path, etag, FEATURES | ERRORS | RETRY)
    part_sizes: tuple[tuple[str, int], ...] = ()

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
        "code": pa.string(),
        "retryable": pa.bool_(),
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
    """Write one chunk's parts, then its record; ``rows`` has FEATURE_COLUMNS plus stage, reason, code, retryable.

    The last four are NULL for featurized rows.

    The accounting is checked before the record is written: every input row
    is in exactly one of the two parts.
    """
    failed = rows["reason"].notna()
    featurized, errors = rows[~failed], rows[failed]
    if len(featurized) + len(errors) != len(rows) or rows["path"].duplicated().any():
        raise RuntimeError(f"chunk accounting failed: {len(rows)} rows, {len(featurized)} + {len(errors)} written")
    name = f"{fingerprint}-{rows_hash(list(zip(rows['path'], rows['etag'], strict=True)))}"
    part_uris, part_sizes = {}, {}
    for kind, frame, columns in (("features", featurized, FEATURE_COLUMNS), ("errors", errors, ERROR_COLUMNS)):
        if len(frame):
            data = _parquet_bytes(frame, columns)
            part_uris[kind] = join(run_uri, kind, f"part-{name}-{hashlib.sha256(data).hexdigest()[:16]}.parquet")
            part_sizes[part_uris[kind]] = len(data)
            storage.write_bytes(part_uris[kind], data)
    commit = Commit(
        uri=join(run_uri, COMMITS_DIR, f"{name}.json"),
        fingerprint=fingerprint,
        features=part_uris.get("features"),
        errors=part_uris.get("errors"),
        rows=tuple(
            (path, etag, (RETRY if retry is True else ERRORS) if bad else FEATURES)
            for path, etag, bad, retry in zip(rows["path"], rows["etag"], failed, rows["retryable"], strict=True)
        ),
        part_sizes=tuple(part_sizes.items()),
    )
    record = {
        "fingerprint": fingerprint,
        "features": commit.features,
        "errors": commit.errors,
        "part_sizes": part_sizes,
        "rows": commit.rows,
    }
    storage.write_bytes(commit.uri, json.dumps(record).encode(), "application/json")
    return commit


def read_error_rows(storage: Storage, commit: Commit) -> list[dict]:
    """The error rows of a commit, as dicts of ERROR_COLUMNS (parts written before a column existed lack it)."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(storage.read_bytes(commit.errors))).to_pylist() if commit.errors else []


def read_commits(storage: Storage, run_uri: str) -> list[Commit]:
    """Every commit record of the run: one LIST per 1,000 records, one GET per record."""
    commits = []
    for listed in storage.list_files(join(run_uri, COMMITS_DIR)):
        if not listed.path.endswith(".json"):
            continue
        record = json.loads(storage.read_bytes(listed.path))
        rows = tuple(tuple(row) for row in record["rows"])
        sizes = tuple(record.get("part_sizes", {}).items())
        commits.append(Commit(listed.path, record["fingerprint"], record["features"], record["errors"], rows, sizes))
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


def _parts_intact(commit: Commit, parts: dict[str, int]) -> bool:
    """Every part of the commit is listed, with the size its record gives (records before sizes: by name)."""
    sizes = dict(commit.part_sizes)
    return all(part in parts and sizes.get(part, parts[part]) == parts[part] for part in commit.parts)


def plan_run(
    images: Sequence[ListedFile],
    commits: Sequence[Commit],
    *,
    fingerprint: str,
    parts: dict[str, int],
    retry: bool = True,
) -> Plan:
    """An image is done when a commit of this fingerprint holds its path with its current ETag.

    Each (path, ETag) counts once, in the first commit (by record name) that
    holds it; a commit whose parts are missing from ``parts`` (the listed
    part paths and their sizes), or listed with another size than its record
    gives, is reported and its images redone. With ``retry`` (the plan of a run, not its verification), rows of
    retryable errors are not done: their commits are rewritten without them
    and the images are read again.
    """
    current = {image.path: image.etag for image in images}
    assigned: set[str] = set()
    plan = Plan(todo=[])
    for commit in sorted(commits, key=lambda c: c.uri):
        if not _parts_intact(commit, parts):
            plan.missing.append(commit)
            continue
        if commit.fingerprint != fingerprint:
            plan.drop.append(commit)
            continue
        kept = {
            path
            for path, etag, kind in commit.rows
            if current.get(path) == etag and path not in assigned and not (retry and kind == RETRY)
        }
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


def compact_all(storage: Storage, run_uri: str, plan: Plan) -> None:
    """Rewrite the plan's commits that hold stale rows, before the featurize stage adds new ones."""
    for commit, kept in plan.compact:
        compact(storage, run_uri, commit=commit, kept=kept)


def settle(storage: Storage, run_uri: str, *, plan: Plan, live: Sequence[Commit]) -> int:
    """Once every image is verified committed: remove what the plan made obsolete, and leftover parts.

    A record this run rewrote under the same name (its chunk redone with the
    same rows, e.g. after features/ was deleted) is live again and is kept.
    """
    rewritten = {commit.uri for commit in live}
    obsolete = [commit for commit in [*plan.drop, *plan.missing] if commit.uri not in rewritten]
    return remove_leftovers(storage, run_uri, live=live, obsolete=obsolete)


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


def machine_identity() -> str:
    """Which machine a lock holder runs on: its EC2 instance id, else its kernel's boot id and its hostname.

    Hostnames alone repeat (every Ubuntu AMI boots as "ubuntu", containers
    share names), and a PID says nothing on another machine.
    """
    instance = imds_get("instance-id")
    if instance:
        return f"ec2:{instance}"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "unknown"
    return f"boot:{boot}@{platform.node()}"


def pid_namespace() -> str:
    """The PID namespace of this process: PIDs of two containers on one kernel are not comparable."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class RunLock:
    """One writer per run id: a lock object created with a conditional write and renewed while the run lives.

    S3 guarantees that of concurrent PUTs with If-None-Match: * on one key,
    exactly one succeeds, and reads after a write are strongly consistent, so
    two runs can never both believe they hold the lock. Every change after
    that (renewal, takeover, release) is a PUT conditional on the holder's
    ETag, so a run that lost its lock cannot overwrite or free its taker's.
    A lock is free once released, once it has not been renewed for ``ttl``
    by the store's own clock (S3's Date against the object's LastModified,
    so the hosts' clocks do not matter), or at once when its holder's process
    is gone from this machine and PID namespace; ``--break-lock`` takes it
    regardless.
    """

    def __init__(self, storage: Storage, run_uri: str, *, ttl: timedelta, break_lock: bool = False):
        self.storage, self.uri, self.ttl, self.break_lock = storage, join(run_uri, LOCK_FILE), ttl, break_lock
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._identity = {"machine": machine_identity(), "pid_namespace": pid_namespace(), "pid": os.getpid()}

    def _body(self, released: bool = False) -> bytes:
        holder = f"{pwd.getpwuid(os.geteuid()).pw_name}@{platform.node()} pid {os.getpid()}"
        return json.dumps(
            {
                "holder": holder,
                "host": platform.node(),
                **self._identity,
                "written_at": datetime.now(timezone.utc).isoformat(),
                "ttl_seconds": self.ttl.total_seconds(),
                "released": released,
            }
        ).encode()

    def _free(self, held: dict, stored) -> str | None:
        """Why the lock is free to take, or None while its holder may be alive."""
        if held.get("released"):
            return "released"
        if stored.now - stored.modified > timedelta(seconds=held.get("ttl_seconds", self.ttl.total_seconds())):
            return "expired"
        same_processes = (held.get("machine"), held.get("pid_namespace")) == (
            self._identity["machine"],
            self._identity["pid_namespace"],
        )
        if same_processes and not _process_alive(held.get("pid")):
            return "dead"
        return "broken" if self.break_lock else None

    def acquire(self) -> None:
        self.etag = self.storage.create(self.uri, self._body())
        if not self.etag:
            stored = self.storage.read_versioned(self.uri)
            held = json.loads(stored.data) if stored else {}
            why = self._free(held, stored) if stored else "released"
            if why is None:
                raise LockHeldError(
                    f"the run is being written by {held.get('holder', 'another run')} (renewed "
                    f"{held.get('written_at')}, lock {self.uri}, free {self.ttl} after its last renewal). "
                    "Wait for it to finish, use another --run-id, or if that run is dead, rerun with --break-lock."
                )
            if why != "released":
                log.warning("taking over the %s lock of %s at %s", why, held.get("holder"), self.uri)
            self.etag = (
                self.storage.create(self.uri, self._body(), replacing=stored.etag)
                if stored
                else self.storage.create(self.uri, self._body())
            )
            if not self.etag:
                raise LockHeldError(f"another run took the lock {self.uri} at the same time; try again")
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="lock-renewer", daemon=True)
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(max(self.ttl.total_seconds() / 4, 0.5)):
            try:
                renewed = self.storage.create(self.uri, self._body(), replacing=self.etag)
            except Exception as exc:  # a failed renewal is retried at the next interval, well before the TTL
                log.warning("could not renew the lock %s: %s", self.uri, exc)
                continue
            if not renewed:
                self.lost = True
                log.error("lost the lock %s: another run took it over; this run will not publish", self.uri)
                return
            self.etag = renewed

    def check(self) -> None:
        """Raise if another run took the lock over while this one ran."""
        if self.lost:
            raise LockHeldError(f"another run took over the lock {self.uri} during this run; no manifest was written")

    def stop_renewing(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()

    def release(self) -> None:
        """Mark the lock released, only if it is still ours (a conditional PUT: S3 has no conditional DELETE)."""
        self.stop_renewing()
        if self.etag and not self.lost:
            self.storage.create(self.uri, self._body(released=True), replacing=self.etag)
        self.etag = None
