"""The EMR step runs the same job: its arguments parse with the job's CLI, and the bootstrap script parses."""

import json
import subprocess

from featurize.cli import parse_args

from harness.launcher import REPO


def test_step_arguments_are_accepted_by_the_job():
    [step] = json.loads((REPO / "emr" / "step.json").read_text())
    assert step["Type"] == "Spark"
    args = step["Args"]
    entry = args.index("s3://BUCKET/emr/featurize_images.py")
    assert args[entry - 2 : entry] == ["--py-files", "s3://BUCKET/emr/featurize.zip"]
    parsed = parse_args(args[entry + 1 :])
    assert (parsed.input, parsed.output, parsed.weights) == ("s3://BUCKET/images/", "s3://BUCKET/runs/", "imagenet")


def test_bootstrap_script_parses():
    result = subprocess.run(["bash", "-n", str(REPO / "emr" / "bootstrap.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
