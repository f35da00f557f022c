"""The run's options as one frozen, typed value: built once by the command line, read by every step.

Each default is written once. The settings of a task (batch.FeaturizeSettings,
fetch.FetchSettings, pipeline.ChunkSettings) own the defaults of what they
configure; the run's other defaults are here. The playbooks' job_* defaults
are tested against these (tests/test_defaults.py).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from featurize.batch import FeaturizeSettings
from featurize.fetch import FetchSettings
from featurize.images import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_PIXELS
from featurize.model import BATCH_SIZES

# Fewer, larger tasks keep CNN batches full and pay each task's start cost less
# often; whole waves of them keep every core busy (docs/performance.md).
DEFAULT_FILES_PER_PARTITION = 1024
# Images per committed chunk: a crash loses at most this many per running task.
DEFAULT_COMMIT_EVERY = 512


@dataclass(frozen=True)
class JobConfig:
    input: str
    output: str
    run_id: str
    weights: str = FeaturizeSettings.weights
    image_size: int = FeaturizeSettings.image_size
    # None: the runtime's own (model.BATCH_SIZES).
    batch_size: int | None = None
    runtime: str = FeaturizeSettings.runtime
    # Exactly one of the two is set: a variance target, or a number of components.
    pca_variance: float | None = 0.95
    pca_k: int | None = None
    # None: spark.task.cpus.
    tf_threads: int | None = None
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_mb: int = DEFAULT_MAX_DECODE_BYTES // 2**20
    files_per_partition: int = DEFAULT_FILES_PER_PARTITION
    commit_every: int = DEFAULT_COMMIT_EVERY
    fetch_concurrency: int = FetchSettings.max_in_flight
    lock_ttl_hours: int = 12
    break_lock: bool = False
    log_level: str = "INFO"
    # The cost estimate (featurize.cost): a JSON price table over the defaults, and the hosts' credit mode.
    prices: str | None = None
    cpu_credits: str = "unlimited"

    @property
    def cnn_batch_size(self) -> int:
        """Images per CNN call: --batch-size, else the fastest for the runtime."""
        return self.batch_size or BATCH_SIZES[self.runtime]


def default(name: str):
    """The default of one JobConfig option."""
    return next(field.default for field in fields(JobConfig) if field.name == name)
