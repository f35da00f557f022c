"""The commit protocol without Spark: planning reruns, compaction, and one writer per run id."""

from __future__ import annotations

import json
import platform
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from featurize.commits import (
    RunLock,
    compact,
    compact_all,
    machine_identity,
    pid_namespace,
    plan_run,
    read_commits,
    remove_leftovers,
    settle,
    write_chunk,
)
from featurize.errors import LockHeldError
from featurize.storage import ListedFile, Storage

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def listed(path: str, etag: str) -> ListedFile:
    return ListedFile(path, 10, etag, NOW)


def chunk_rows(*rows: tuple[str, str, bool], retryable: bool = False) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [path for path, _, _ in rows],
            "label": "A",
            "features": [None if bad else [0.5, 1.5] for _, _, bad in rows],
            "stage": [("read" if retryable else "decode") if bad else None for _, _, bad in rows],
            "reason": ["broken" if bad else None for _, _, bad in rows],
            "code": [("AccessDenied" if retryable else "") if bad else None for _, _, bad in rows],
            "retryable": [retryable if bad else None for _, _, bad in rows],
            "size_bytes": 10,
            "etag": [etag for _, etag, _ in rows],
            "modified": NOW,
        }
    )


@pytest.fixture
def run_uri(tmp_path):
    return f"file:{tmp_path}/run"


def parts_of(storage, run_uri):
    return {f.path: f.size for kind in ("features", "errors") for f in storage.list_files(f"{run_uri}/{kind}")}


def test_a_rerun_reuses_unchanged_rows_and_plans_the_rest(run_uri):
    storage = Storage()
    first = write_chunk(
        storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False), ("b", "1", True), ("c", "1", False))
    )
    second = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("d", "1", False)))
    other_settings = write_chunk(storage, run_uri, fingerprint="old", rows=chunk_rows(("e", "1", False)))
    now = [listed("a", "1"), listed("b", "1"), listed("c", "2"), listed("e", "1"), listed("f", "1")]

    plan = plan_run(now, read_commits(storage, run_uri), fingerprint="fp", parts=parts_of(storage, run_uri))

    assert [f.path for f in plan.todo] == ["c", "e", "f"], "changed, other settings, new"
    assert plan.reused == 2
    assert plan.compact == [(first, frozenset({"a", "b"}))]
    assert sorted(c.uri for c in plan.drop) == sorted([second.uri, other_settings.uri]), "d removed, e re-featurized"
    assert not plan.up_to_date


def test_compaction_keeps_live_rows_and_removes_the_old_chunk(run_uri):
    storage = Storage()
    old = write_chunk(
        storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False), ("b", "1", True), ("c", "1", False))
    )
    new = compact(storage, run_uri, commit=old, kept=frozenset({"a", "b"}))
    assert sorted(new.rows) == [("a", "1", "features"), ("b", "1", "errors")]
    assert read_commits(storage, run_uri) == [new]
    assert set(parts_of(storage, run_uri)) == set(new.parts)


def test_a_commit_whose_part_is_gone_is_reported_and_its_images_redone(run_uri):
    storage = Storage()
    commit = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False)))
    storage.delete(commit.features)
    plan = plan_run(
        [listed("a", "1")], read_commits(storage, run_uri), fingerprint="fp", parts=parts_of(storage, run_uri)
    )
    assert (plan.missing, [f.path for f in plan.todo]) == ([commit], ["a"])


def test_an_image_in_two_commits_counts_once(run_uri):
    storage = Storage()
    write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False), ("b", "1", False)))
    write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("b", "1", False), ("c", "1", False)))
    plan = plan_run(
        [listed(p, "1") for p in "abc"],
        read_commits(storage, run_uri),
        fingerprint="fp",
        parts=parts_of(storage, run_uri),
    )
    assert (plan.reused, plan.todo) == (3, [])
    assert [kept for _, kept in plan.compact] == [frozenset({"c"})]


def test_leftover_parts_of_a_crash_are_removed(run_uri, tmp_path):
    storage = Storage()
    live = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False)))
    crashed = tmp_path / "run" / "features" / "part-fp-crashed.parquet"
    crashed.write_bytes(b"half")
    assert remove_leftovers(storage, run_uri, live=[live], obsolete=[]) == 1
    assert set(parts_of(storage, run_uri)) == set(live.parts)


def test_retryable_errors_are_planned_again_and_permanent_ones_are_reused(run_uri):
    storage = Storage()
    images = [listed(f"{run_uri}/in/{name}.jpg", "e") for name in ("ok", "denied", "broken")]
    good = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows((images[0].path, "e", False)))
    denied = write_chunk(
        storage, run_uri, fingerprint="fp", rows=chunk_rows((images[1].path, "e", True), retryable=True)
    )
    broken = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows((images[2].path, "e", True)))
    parts = parts_of(storage, run_uri)

    rerun = plan_run(images, [good, denied, broken], fingerprint="fp", parts=parts)
    verified = plan_run(images, [good, denied, broken], fingerprint="fp", parts=parts, retry=False)

    assert [image.path for image in rerun.todo] == [images[1].path]
    assert (rerun.reused, [c.uri for c in rerun.drop]) == (2, [denied.uri])
    assert (verified.todo, verified.reused, len(verified.live)) == ([], 3, 3)
    assert [kind for *_, kind in denied.rows] == ["retry"] and [kind for *_, kind in broken.rows] == ["errors"]


def test_a_part_overwritten_under_its_recorded_name_is_found_by_its_size(run_uri):
    storage = Storage()
    commit = write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False), ("b", "1", False)))
    storage.write_bytes(commit.features, b"not the part its record describes")

    plan = plan_run([listed("a", "1"), listed("b", "1")], [commit], fingerprint="fp", parts=parts_of(storage, run_uri))

    assert (plan.missing, [image.path for image in plan.todo]) == ([commit], ["a", "b"])


class Killed(Exception):
    """The process stopped here: every write before this one happened, this one and the rest did not."""


class KilledAt(Storage):
    """Local storage whose ``kill_at``-th change (PUT or DELETE) never happens: the run stops there."""

    def __init__(self, kill_at: int | None = None):
        super().__init__()
        self.kill_at, self.changes = kill_at, 0

    def _change(self):
        self.changes += 1
        if self.changes == self.kill_at:
            raise Killed(self.changes)

    def write_bytes(self, uri, data, content_type=None):
        self._change()
        return super().write_bytes(uri, data, content_type)

    def delete(self, uri):
        self._change()
        return super().delete(uri)

    def delete_many(self, uris):
        if uris:
            self._change()
        return super().delete_many(uris)


def outcome_rows(images, outcomes: dict[str, str]) -> pd.DataFrame:
    """A featurize task's rows: ``outcomes`` maps a path to "retry" or "permanent"; the others are featurized."""
    kinds = [outcomes.get(image.path) for image in images]
    return pd.DataFrame(
        {
            "path": [image.path for image in images],
            "label": "A",
            "features": [None if kind else [0.5, 1.5] for kind in kinds],
            "stage": [kind and "read" for kind in kinds],
            "reason": [kind and f"{kind} error" for kind in kinds],
            "code": [kind and "X" for kind in kinds],
            "retryable": [kind and kind == "retry" for kind in kinds],
            "size_bytes": 10,
            "etag": [image.etag for image in images],
            "modified": NOW,
        }
    )


def run_protocol(storage, run_uri, images, outcomes, chunk=2):
    """What job.run_locked does to storage, with the featurize tasks' write_chunk in place of Spark."""
    plan = plan_run(images, read_commits(storage, run_uri), fingerprint="fp", parts=parts_of(storage, run_uri))
    compact_all(storage, run_uri, plan)
    for start in range(0, len(plan.todo), chunk):
        write_chunk(storage, run_uri, fingerprint="fp", rows=outcome_rows(plan.todo[start : start + chunk], outcomes))
    verified = plan_run(
        images, read_commits(storage, run_uri), fingerprint="fp", parts=parts_of(storage, run_uri), retry=False
    )
    assert not (verified.todo or verified.compact or verified.missing)
    settle(storage, run_uri, plan=plan, live=verified.live)
    return plan, verified


FIRST_INPUTS = [listed(name, "1") for name in "abcdef"]
# b changed, f removed, g and h new; d (retryable in the first run) is read this time.
SECOND_INPUTS = [
    listed("a", "1"),
    listed("b", "2"),
    *(listed(name, "1") for name in "cde"),
    *(listed(n, "1") for n in "gh"),
]
SECOND_CHANGES = 21


def second_run_state(run_uri, kill_at=None):
    """The first run complete (d retryable, e permanent), then the second one over the changed inputs."""
    run_protocol(KilledAt(), run_uri, FIRST_INPUTS, {"d": "retry", "e": "permanent"})
    storage = KilledAt(kill_at)
    try:
        run_protocol(storage, run_uri, SECOND_INPUTS, {"e": "permanent"})
    except Killed:
        return storage, True
    return storage, False


def test_the_second_run_makes_the_changes_the_kill_test_enumerates(run_uri):
    storage, killed = second_run_state(run_uri)
    assert (killed, storage.changes) == (False, SECOND_CHANGES)


@pytest.mark.parametrize("kill_at", range(1, SECOND_CHANGES + 1))
def test_a_run_killed_at_any_change_is_completed_exactly_by_the_rerun(tmp_path, kill_at):
    run_uri = f"file:{tmp_path}/run"
    storage, killed = second_run_state(run_uri, kill_at)
    assert killed

    _, verified = run_protocol(KilledAt(), run_uri, SECOND_INPUTS, {"e": "permanent"})

    rows = sorted(row for commit in verified.live for row in commit.rows)
    expected = [(image.path, image.etag, "errors" if image.path == "e" else "features") for image in SECOND_INPUTS]
    assert rows == expected, "every current image exactly once, as featurized or as its error"
    named = {part for commit in verified.live for part in commit.parts}
    assert set(parts_of(storage, run_uri)) == named, "no leftover part, no part missing"
    assert {commit.uri for commit in read_commits(storage, run_uri)} == {commit.uri for commit in verified.live}


def test_chunk_accounting_is_checked_before_the_commit_is_written(run_uri):
    storage = Storage()
    with pytest.raises(RuntimeError, match="chunk accounting failed"):
        write_chunk(storage, run_uri, fingerprint="fp", rows=chunk_rows(("a", "1", False), ("a", "1", False)))
    assert read_commits(storage, run_uri) == []


@pytest.fixture(params=["local", "s3"])
def lock_place(request, tmp_path, s3, bucket, moto_endpoint):
    if request.param == "local":
        return Storage(), f"file:{tmp_path}/run"
    return Storage(moto_endpoint), f"s3a://{bucket}/runs/r1"


def test_one_writer_per_run_id(lock_place):
    storage, run_uri = lock_place
    first = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    first.acquire()
    with pytest.raises(LockHeldError, match=r"being written by .*@.* pid \d+ \(renewed .* --break-lock"):
        RunLock(storage, run_uri, ttl=timedelta(hours=1)).acquire()
    first.release()
    second = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    second.acquire()
    second.release()


def test_a_dead_runs_lock_expires_or_is_broken(lock_place):
    storage, run_uri = lock_place
    dead = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    dead.acquire()
    breaker = RunLock(storage, run_uri, ttl=timedelta(hours=1), break_lock=True)
    breaker.acquire()
    dead.release()
    assert json.loads(storage.read_bytes(f"{run_uri}/_lock"))["holder"], "the dead run cannot release a lock it lost"
    breaker.release()

    expired = RunLock(storage, run_uri, ttl=timedelta(seconds=-1))
    expired.acquire()
    taker = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    taker.acquire()
    assert storage.etag(f"{run_uri}/_lock") == taker.etag
    taker.release()


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def held_by(**identity) -> bytes:
    body = {"holder": "x", "machine": machine_identity(), "pid_namespace": pid_namespace(), "ttl_seconds": 3600}
    return json.dumps({**body, **identity}).encode()


def test_a_lock_whose_process_died_on_this_machine_is_taken_over(tmp_path):
    storage, run_uri = Storage(), f"file:{tmp_path}/run"
    storage.create(f"{run_uri}/_lock", held_by(pid=dead_pid()))
    taker = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    taker.acquire()
    taker.release()


@pytest.mark.parametrize(
    "elsewhere",
    [
        {"machine": "boot:another-kernel@" + platform.node()},
        {"pid_namespace": "pid:[1]"},  # a container on this kernel, with the same hostname
    ],
    ids=["other machine, same hostname", "same machine, other PID namespace"],
)
def test_a_pid_that_is_not_running_here_says_nothing_about_a_holder_elsewhere(tmp_path, elsewhere):
    storage, run_uri = Storage(), f"file:{tmp_path}/run"
    storage.create(f"{run_uri}/_lock", held_by(pid=dead_pid(), **elsewhere))
    with pytest.raises(LockHeldError, match="being written by x"):
        RunLock(storage, run_uri, ttl=timedelta(hours=1)).acquire()


def test_lock_renewed_past_ttl_then_lost_when_dead(lock_place):
    storage, run_uri = lock_place
    alive = RunLock(storage, run_uri, ttl=timedelta(seconds=2))
    alive.acquire()
    time.sleep(3)
    with pytest.raises(LockHeldError):
        RunLock(storage, run_uri, ttl=timedelta(seconds=2)).acquire()
    # Dead: it stops renewing without releasing, as a killed process does.
    alive.stop_renewing()
    time.sleep(3)
    taker = RunLock(storage, run_uri, ttl=timedelta(hours=1))
    taker.acquire()
    alive.release()
    assert storage.etag(f"{run_uri}/_lock") == taker.etag, "a release after a takeover changes nothing"
    assert alive.lost is False and json.loads(storage.read_bytes(f"{run_uri}/_lock"))["released"] is False
    taker.release()
    assert json.loads(storage.read_bytes(f"{run_uri}/_lock"))["released"] is True


def test_lock_taken_over_is_found_before_publishing(lock_place):
    storage, run_uri = lock_place
    holder = RunLock(storage, run_uri, ttl=timedelta(seconds=2))
    holder.acquire()
    RunLock(storage, run_uri, ttl=timedelta(hours=1), break_lock=True).acquire()
    time.sleep(1.5)
    with pytest.raises(LockHeldError, match="took over the lock"):
        holder.check()
