"""A featurize task holds at most the fetch cap plus one file in image bytes, whatever the files' sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from harness.launcher import JOBS

pytestmark = [pytest.mark.spark, pytest.mark.slow]

FILE_BYTES = 250 * 2**20
MODEL_AND_SLACK = 64 * 2**20

TASK = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd
    from featurize.batch import FeaturizeSettings
    from featurize.config import DEFAULT_COMMIT_EVERY
    from featurize.fetch import FetchSettings
    from featurize.model import worker_extractor
    from featurize.pipeline import ChunkSettings, Todo, make_featurize_task, model_key
    from featurize.storage import Storage

    def status(field):
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024

    settings, fetch = FeaturizeSettings(weights="none"), FetchSettings()
    extract = worker_extractor(*model_key(settings))
    extract(np.zeros((settings.batch_size, settings.image_size, settings.image_size, 3), np.uint8))
    files = Storage().list_files(sys.argv[1])
    todo = [Todo(f.path, "big", f.size, f.etag, f.modified) for f in files]
    task = make_featurize_task(settings, fetch, ChunkSettings("file:" + sys.argv[2], "fp", DEFAULT_COMMIT_EVERY))
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from here
    committed = pd.concat(task(todo))
    print(json.dumps({"growth": status("VmHWM") - before, "cap": fetch.max_bytes_in_flight,
                      "errors": int(committed["errors"].sum())}))
    """
)


def test_a_dozen_250_mb_files_stay_within_the_cap_plus_one_file(tmp_path):
    images = tmp_path / "images" / "big"
    images.mkdir(parents=True)
    for index in range(12):
        with open(images / f"sparse-{index:02}.jpg", "wb") as sparse:
            sparse.truncate(FILE_BYTES)  # reads return 250 MB of zeros: not an image, each an error row
    result = subprocess.run(
        [sys.executable, "-c", TASK, str(images.parent), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(JOBS), "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["errors"] == 12
    assert measured["growth"] < measured["cap"] + FILE_BYTES + MODEL_AND_SLACK, measured
