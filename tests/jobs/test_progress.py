"""The featurize stage's progress: tasks' counts summed, logged at each tenth, published for readers."""

from __future__ import annotations

import json
import logging

from featurize.progress import PROGRESS_OBJECT, ProgressWatcher, TaskReporter, task_report_uri
from featurize.storage import Storage, join


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStorage(Storage):
    def __init__(self):
        super().__init__()
        self.reads = 0

    def read_bytes(self, uri: str) -> bytes:
        self.reads += 1
        return super().read_bytes(uri)


def test_a_task_writes_its_count_at_most_every_interval_and_at_its_end(tmp_path):
    clock, uri = Clock(), task_report_uri((tmp_path / "records").as_uri(), 3)
    reporter = TaskReporter(Storage(), uri, every_s=5.0, clock=clock)
    reporter.add(1)
    for _ in range(9):
        clock.now += 1.0
        reporter.add(1)
    assert json.loads(Storage().read_bytes(uri)) == {"done": 6}, "written at 0 s and 5 s, not after every image"
    reporter.write()
    assert json.loads(Storage().read_bytes(uri)) == {"done": 10}
    assert uri.endswith("/task-00003.json")


def test_the_driver_sums_the_tasks_logs_each_tenth_with_an_eta_and_publishes_it(tmp_path, caplog):
    clock, storage = Clock(), CountingStorage()
    run, records = tmp_path.as_uri(), join(tmp_path.as_uri(), "_progress", "t0")
    tasks = [TaskReporter(storage, task_report_uri(records, n), every_s=0, clock=clock) for n in range(2)]
    watcher = ProgressWatcher(storage, run, records, total=200, clock=clock)
    with caplog.at_level(logging.INFO, logger="featurize"):
        clock.now += 10.0
        tasks[0].add(30)
        tasks[1].add(20)
        first = watcher.step()
        reads = storage.reads
        clock.now += 5.0
        tasks[0].add(10)
        second = watcher.step()
        assert storage.reads == reads + 1, "the unchanged count of task 1 is not read again"
        clock.now += 1.0
        quiet = watcher.step()
    assert (first.done, second.done, quiet.done) == (50, 60, 60)
    assert first.line() == "featurizing, 50/200 images (25 %), 5.0 images/s, ETA 30 s"
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [first.line(), second.line()], "a line when another tenth is done, none in between"
    published = json.loads(storage.read_bytes(join(run, PROGRESS_OBJECT)))
    assert (published["done"], published["total"], published["state"]) == (60, 200, "running")
    assert published["eta_seconds"] == 35.0
    assert published["line"] == second.line() == "featurizing, 60/200 images (30 %), 4.0 images/s, ETA 35 s"


def test_a_quiet_stretch_still_logs_every_30_seconds_and_the_end_is_published(tmp_path, caplog):
    clock, storage = Clock(), Storage()
    run, records = tmp_path.as_uri(), join(tmp_path.as_uri(), "_progress", "t0")
    with (
        caplog.at_level(logging.INFO, logger="featurize"),
        ProgressWatcher(storage, run, records, total=1000, poll_s=3600, clock=clock) as watcher,
    ):
        clock.now += 29.0
        watcher.step()
        clock.now += 1.0
        watcher.step()
    assert [record.getMessage() for record in caplog.records] == [
        "featurizing, 0/1,000 images (0 %), 0.0 images/s, ETA unknown"
    ]
    published = json.loads(storage.read_bytes(join(run, PROGRESS_OBJECT)))
    assert (published["done"], published["state"], published["eta_seconds"]) == (1000, "featurized", 0.0)
    assert published["line"] == "featurized 1,000/1,000 images (100 %) at 33.3 images/s; PCA and the report next"


def test_a_failed_stage_publishes_where_it_stopped(tmp_path):
    clock, storage = Clock(), Storage()
    run, records = tmp_path.as_uri(), join(tmp_path.as_uri(), "_progress", "t0")
    task = TaskReporter(storage, task_report_uri(records, 0), every_s=0.0, clock=clock)
    watcher = ProgressWatcher(storage, run, records, total=400, poll_s=3600, clock=clock).__enter__()
    task.add(100)
    clock.now += 10.0
    watcher.step()
    watcher.__exit__(RuntimeError, RuntimeError("an executor died"), None)
    published = json.loads(storage.read_bytes(join(run, PROGRESS_OBJECT)))
    assert (published["done"], published["state"]) == (100, "failed")
    assert published["line"] == "the featurize stage failed at 100/400 images (25 %)"
