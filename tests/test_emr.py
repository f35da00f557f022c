"""emr/README.md as written: its zip command, its step (parsed by the job's CLI), its bootstrap and weights agree.

EMR itself cannot be reached from here; what can be checked without it is checked.
"""

import json
import re
import shlex
import subprocess
import zipfile
from pathlib import Path

from featurize.cli import parse_args
from featurize.model import imagenet_weights_path

from harness.launcher import JOBS, REPO

README = (REPO / "emr" / "README.md").read_text()
BOOTSTRAP = (REPO / "emr" / "bootstrap.sh").read_text()
[STEP] = json.loads((REPO / "emr" / "step.json").read_text())


def commands() -> list[str]:
    """The shell commands of the README's code block, continuation lines joined, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", README, re.DOTALL).group(1)
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def spark_conf(name: str) -> str:
    args = STEP["Args"]
    [value] = [
        args[i + 1].split("=", 1)[1]
        for i, arg in enumerate(args)
        if arg == "--conf" and args[i + 1].startswith(f"{name}=")
    ]
    return value


def test_the_documented_command_builds_the_jobs_zip():
    [build] = [command for command in commands() if "build_job_zip" in command]
    result = subprocess.run(shlex.split(build), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(REPO / "build" / "featurize.zip") as archive:
        packaged = set(archive.namelist())
    assert packaged == {str(path.relative_to(JOBS)) for path in (JOBS / "featurize").rglob("*.py")}


def test_step_arguments_are_accepted_by_the_job():
    assert STEP["Type"] == "Spark"
    args = STEP["Args"]
    entry = args.index("s3://BUCKET/emr/featurize_images.py")
    assert args[entry - 2 : entry] == ["--py-files", "s3://BUCKET/emr/featurize.zip"]
    parsed = parse_args(args[entry + 1 :])
    assert (parsed.input, parsed.output, parsed.weights) == ("s3://BUCKET/images/", "s3://BUCKET/runs/", "imagenet")
    uploaded = {command.split()[4] for command in commands() if command.startswith("aws s3 cp")}
    assert {"s3://BUCKET/emr/featurize.zip", "s3://BUCKET/emr/featurize_images.py"} <= uploaded


def test_the_step_runs_pyspark_on_the_python_the_bootstrap_installs():
    """EMR 7's Python is 3.9; the job's floor is 3.10."""
    python = re.search(r"^python=(\S+)$", BOOTSTRAP, re.MULTILINE).group(1)
    assert spark_conf("spark.pyspark.python") == python == "/usr/bin/python3.11"
    assert "dnf install -y -q python3.11 python3.11-pip" in BOOTSTRAP
    floor = re.search(r'requires-python = ">=(\d+)\.(\d+)"', (REPO / "pyproject.toml").read_text()).groups()
    installed = re.search(r"python(\d+)\.(\d+)$", python).groups()
    assert tuple(map(int, installed)) >= tuple(map(int, floor)), f"python{'.'.join(installed)} is below the job's floor"


def test_the_bootstrap_puts_the_weights_where_the_job_looks(monkeypatch):
    keras_home = spark_conf("spark.executorEnv.KERAS_HOME")
    assert spark_conf("spark.yarn.appMasterEnv.KERAS_HOME") == keras_home
    [create] = [command for command in commands() if command.startswith("aws emr create-cluster")]
    bootstrap_args = re.search(r"Args=\[([^\]]+)\]", create).group(1).split(",")
    assert bootstrap_args[0] == "s3://BUCKET/emr/job.txt"
    weights_name = Path(bootstrap_args[1]).name
    assert f'"{keras_home}/models/$(basename "$weights_uri")"' in BOOTSTRAP
    monkeypatch.setenv("KERAS_HOME", keras_home)
    assert imagenet_weights_path(224) == Path(keras_home) / "models" / weights_name
    downloaded = [command for command in commands() if command.startswith("curl")]
    assert downloaded and downloaded[0].endswith("/" + weights_name)


def test_bootstrap_script_parses():
    result = subprocess.run(["bash", "-n", str(REPO / "emr" / "bootstrap.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
