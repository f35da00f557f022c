"""The CNN built in every Python worker while the driver lists, locks and plans, so featurize tasks start warm."""

from __future__ import annotations

import logging
import time

from featurize.batch import FeaturizeSettings

log = logging.getLogger("featurize")


class WarmUp:
    """Builds the model in the executors' Python workers while the driver lists, locks and plans.

    A failure here is only logged: the featurize tasks build the model
    themselves and report the real error.
    """

    GROUP = "fruitcloud-warm-up"

    def __init__(self, spark, settings: FeaturizeSettings):
        from pyspark import InheritableThread

        from featurize.pipeline import warm_up_frame

        # The plan is built here and only collected in the thread: building it imports
        # pyspark.ml and pandas UDF modules, and a run deadlocked when that thread and the
        # main thread (botocore) imported at once (setuptools' vendored importer, pulled in
        # by pyspark.ml, escapes Python's import locks).
        frame = warm_up_frame(spark, settings)
        self.spark = spark
        self.cancelled = False
        self.workers = 0
        self.seconds = 0.0
        self._thread = InheritableThread(target=self._run, args=(frame,), daemon=True)
        self._thread.start()

    def _run(self, frame) -> None:
        self.spark.sparkContext.setJobGroup(self.GROUP, "build the CNN in every Python worker", True)
        started = time.perf_counter()
        try:
            self.workers = len(frame.collect())
        except Exception as exc:  # the featurize stage raises the real error, with its context
            if self.cancelled:
                return
            log.warning("warming up the Python workers failed; the featurize tasks build the model: %s", exc)
        self.seconds = time.perf_counter() - started

    def wait(self) -> None:
        self._thread.join()

    def cancel(self) -> None:
        """Stop the warm-up if it still runs (a run that failed early); Spark warns about a finished group."""
        if self._thread.is_alive():
            self.cancelled = True
            self.spark.sparkContext.cancelJobGroup(self.GROUP)
        self._thread.join()
