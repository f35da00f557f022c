"""The pinned requirements install on the Python of every supported host, not only on this machine's.

pip resolves requirements/host.txt for each target's Python from the package
index, wheels only (nothing is built on a host), without installing: it reads
the wheels' metadata, so this takes seconds. pyspark is published as an sdist
only (pure Python); its Python floor is checked from its own metadata.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from support.ansible_helpers import REPO

# The python3 of each supported host release (roles/*/vars/<release>.yml).
HOST_PYTHONS = {"Ubuntu 22.04": "3.10", "Debian 12": "3.11", "Ubuntu 24.04": "3.12", "Debian 13": "3.13"}
PLATFORMS = ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64", "manylinux_2_28_x86_64"]


def pins(path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found |= pins(path.with_name(line[3:].strip()))
        elif line:
            name, version = line.split("==")
            found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


def pip_dry_run(tmp_path, python: str, requirements: list[str]) -> dict[str, str]:
    report = tmp_path / f"report-{python}.json"
    platform_args = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--only-binary=:all:",
         "--python-version", python, "--implementation", "cp", *platform_args,
         "--target", str(tmp_path / "target"), "--report", str(report), *requirements],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"requirements do not install on Python {python}:\n{result.stderr[-3000:]}"
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]}  # fmt: skip


@pytest.mark.parametrize(("release", "python"), HOST_PYTHONS.items(), ids=HOST_PYTHONS)
def test_host_requirements_resolve_to_the_pins_on_the_hosts_python(tmp_path, release, python):
    pinned = pins(REPO / "requirements" / "host.txt")
    wheels = [f"{name}=={version}" for name, version in pinned.items() if name != "pyspark"]

    resolved = pip_dry_run(tmp_path, python, wheels)

    assert {name: resolved.get(name) for name in pinned if name != "pyspark"} == {
        name: version for name, version in pinned.items() if name != "pyspark"
    }


def test_pyspark_supports_every_host_python():
    from importlib.metadata import metadata

    pinned = pins(REPO / "requirements" / "host.txt")["pyspark"]
    installed = metadata("pyspark")
    floor = re.fullmatch(r">=\s*3\.(\d+)", installed["Requires-Python"])
    assert installed["Version"] == pinned
    assert floor, installed["Requires-Python"]
    assert min(int(python.split(".")[1]) for python in HOST_PYTHONS.values()) >= int(floor.group(1))
