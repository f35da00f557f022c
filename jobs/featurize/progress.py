"""Live progress of the featurize stage: images done, rate and ETA, in the log and in a small object.

Spark tells the driver nothing about a Python task until it ends, and a task
holds ``--files-per-partition`` images. So each task writes its own count to
``<run>/_progress/<run start>/task-<partition>.json`` every few seconds; the
driver lists that folder, reads the counts that changed (by ETag: about one
GET per running task), logs a line and publishes ``<run>/progress.json`` for
any reader (``run_job.yml``, a notebook, ``aws s3 cp``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from featurize.storage import Storage, join

log = logging.getLogger("featurize")

PROGRESS_DIR = "_progress"
PROGRESS_OBJECT = "progress.json"
TASK_REPORT_EVERY_S = 5.0


def task_report_uri(records: str, partition: int) -> str:
    return join(records, f"task-{partition:05d}.json")


class TaskReporter:
    """A task's own count, written at most every ``every_s`` seconds and once at its end."""

    def __init__(self, storage: Storage, uri: str, *, every_s: float = TASK_REPORT_EVERY_S, clock=time.monotonic):
        self.storage, self.uri, self.every_s, self.clock = storage, uri, every_s, clock
        self.done = 0
        self.written_at: float | None = None

    def add(self, images: int) -> None:
        self.done += images
        if self.written_at is None or self.clock() - self.written_at >= self.every_s:
            self.write()

    def write(self) -> None:
        self.storage.write_bytes(self.uri, json.dumps({"done": self.done}).encode(), "application/json")
        self.written_at = self.clock()


@dataclass(frozen=True)
class Snapshot:
    done: int
    total: int
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None

    def line(self, state: str = "running") -> str:
        """The line the driver logs and run_job.yml prints at each poll, for a stage in ``state``."""
        percent = 100 * self.done / self.total if self.total else 100.0
        counts = f"{self.done:,}/{self.total:,} images ({percent:.0f} %)"
        if state == "featurized":
            return f"featurized {counts} at {self.rate:.1f} images/s; PCA and the report next"
        if state == "failed":
            return f"the featurize stage failed at {counts}"
        eta = "unknown" if self.eta_s is None else f"{self.eta_s:.0f} s"
        return f"featurizing, {counts}, {self.rate:.1f} images/s, ETA {eta}"

    def document(self, state: str) -> dict:
        return {
            **asdict(self),
            "state": state,
            "line": self.line(state),
            "images_per_second": round(self.rate, 2),
            "eta_seconds": None if self.eta_s is None else round(self.eta_s, 1),
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }


class ProgressWatcher:
    """On the driver, while the featurize stage runs: sums the tasks' counts, logs and publishes them.

    A line is logged whenever another tenth of the images is done and at
    least every ``log_every_s`` seconds, so a run of hours shows it is alive.
    """

    def __init__(
        self,
        storage: Storage,
        run_uri: str,
        records: str,
        *,
        total: int,
        poll_s: float = 2.0,
        log_every_s: float = 30.0,
        clock=time.monotonic,
    ):
        self.storage, self.records, self.total = storage, records, total
        self.object_uri = join(run_uri, PROGRESS_OBJECT)
        self.poll_s, self.log_every_s, self.clock = poll_s, log_every_s, clock
        self.started = clock()
        self.counts: dict[str, tuple[str, int]] = {}
        self.logged = (self.started, 0)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="featurize-progress", daemon=True)

    def snapshot(self) -> Snapshot:
        """The sum of the tasks' latest counts; a count whose ETag did not change is not read again."""
        for listed in self.storage.list_files(self.records):
            known = self.counts.get(listed.path)
            if known is None or known[0] != listed.etag:
                done = json.loads(self.storage.read_bytes(listed.path))["done"]
                self.counts[listed.path] = (listed.etag, done)
        done = min(self.total, sum(count for _, count in self.counts.values()))
        return Snapshot(done, self.total, self.clock() - self.started)

    def step(self) -> Snapshot:
        snapshot = self.snapshot()
        logged_at, logged_done = self.logged
        tenth = max(1, self.total // 10)
        if snapshot.done // tenth > logged_done // tenth or self.clock() - logged_at >= self.log_every_s:
            log.info("%s", snapshot.line())
            self.publish(snapshot, "running")
            self.logged = (self.clock(), snapshot.done)
        return snapshot

    def publish(self, snapshot: Snapshot, state: str) -> None:
        self.storage.write_bytes(self.object_uri, json.dumps(snapshot.document(state)).encode(), "application/json")

    def _watch(self) -> None:
        while not self.stopped.wait(self.poll_s):
            try:
                self.step()
            except Exception as exc:  # progress is for people: a failed read must not stop the run
                log.warning("progress not updated: %s", exc)

    def __enter__(self) -> ProgressWatcher:
        self.publish(Snapshot(0, self.total, 0.0), "running")
        self.thread.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.stopped.set()
        self.thread.join()
        elapsed = self.clock() - self.started
        if exc_type is None:
            self.publish(Snapshot(self.total, self.total, elapsed), "featurized")
        else:
            done = min(self.total, sum(count for _, count in self.counts.values()))
            self.publish(Snapshot(done, self.total, elapsed), "failed")
