"""What every step of one run shares: its options, storage, locations, settings, clock and lock."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from featurize.batch import FeaturizeSettings
from featurize.commits import RunLock
from featurize.config import JobConfig
from featurize.cost import busy_cpu_seconds
from featurize.fetch import FetchSettings
from featurize.storage import Storage, join
from featurize.warmup import WarmUp

log = logging.getLogger("featurize")


class StageClock:
    """Times stages and logs one line per stage with its counts, so long runs show progress."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        details: dict[str, object] = {}
        yield details
        elapsed = time.perf_counter() - started
        self.seconds[name] = round(elapsed, 3)
        extra = " ".join(f"{key}={value}" for key, value in details.items())
        log.info("stage %-9s %6.1fs  %s", name, elapsed, extra)


@dataclass
class RunContext:
    """What every step of one run needs."""

    spark: object
    config: JobConfig
    storage: Storage
    root: str
    run_uri: str
    settings: FeaturizeSettings
    fetch: FetchSettings
    fingerprint: str
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    clock: StageClock = field(default_factory=StageClock)
    # Set by job.execute as soon as the locations are checked; every later step may use them.
    warm_up: WarmUp | None = None
    lock: RunLock | None = None
    models_built_by_featurize: int = 0
    # Images featurized by this run's featurize stage, per executor host.
    featurized_by_host: dict[str, int] = field(default_factory=dict)
    worker_cpu_seconds: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "cnn": 0.0})
    # For the cost estimate: the host's busy CPU when the run began, and the tasks' S3 requests
    # (a Spark accumulator of pipeline.RequestCountsParam; the driver's own are storage.request_counts()).
    busy_cpu_at_start: float | None = field(default_factory=busy_cpu_seconds)
    requests: object = None

    @property
    def manifest_uri(self) -> str:
        return join(self.run_uri, "manifest.json")
