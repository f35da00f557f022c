"""Every error type of the job, in one place.

Two families: a ``JobError`` ends the run with one readable line (and exit
1); a ``RecordedError`` belongs to one input and becomes a row of the errors
output, never a job failure. A recorded error is *permanent* when the bytes
at this ETag are not a usable image (a rerun reuses the row until the object
changes) and *retryable* when the bytes could not be read or processed this
time (every rerun tries again).
"""

from __future__ import annotations


class JobError(RuntimeError):
    """A failure the user can act on; its message is printed as one line."""


class LockHeldError(JobError):
    """Another run holds the run id."""


class WeightsNotFoundError(JobError):
    """The CNN weights file is not where the job was told to find it."""


class StorageError(JobError):
    """A bucket or location cannot be used (missing, denied, no credentials, not writable)."""


class LocationsOverlapError(JobError):
    """The output would be listed as input."""


class UnreadInputsError(JobError):
    """The run ended with images that could not be read this time: a rerun of the same run id retries them."""


class RecordedError(Exception):
    """One input's problem, recorded as an error row: its message is the reason, ``code`` the AWS error code if any."""

    retryable = False

    def __init__(self, reason: str, code: str = ""):
        super().__init__(reason)
        self.code = code


class ImageDecodeError(RecordedError):
    """The bytes are not an image this job accepts (permanent)."""


class PermanentReadError(RecordedError):
    """The object as listed is not usable: empty, too large (permanent)."""


class RetryableReadError(RecordedError):
    """The object could not be read this time: denied, archived, throttled, unreachable (retried by every rerun)."""

    retryable = True
