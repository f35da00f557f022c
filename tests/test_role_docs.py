"""Each role variable has one source (argument_specs), a default, a use, and its README table generated from it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml
from support.ansible_helpers import REPO

ROLES = sorted(path for path in (REPO / "roles").iterdir() if (path / "meta" / "argument_specs.yml").is_file())


def specs(role) -> dict:
    return yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]


def role_text(role) -> str:
    return "\n".join(
        path.read_text()
        for folder in ("tasks", "templates", "vars", "handlers", "defaults")
        for path in (role / folder).rglob("*")
        if path.is_file()
    )


def test_readme_tables_are_generated_from_argument_specs():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "role_docs.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_every_input_is_declared_defaulted_and_used(role):
    declared = set(specs(role))
    defaults_text = (role / "defaults" / "main.yml").read_text()
    defaults = set(yaml.safe_load(defaults_text) or {})
    # Inputs without a sensible default are listed commented out, with an example.
    listed = defaults | set(re.findall(rf"^# ({role.name}_\w+): ", defaults_text, re.MULTILINE))
    required = {name for name, spec in specs(role).items() if spec.get("required")}
    assert listed | required == declared, "defaults/main.yml and argument_specs disagree"
    text = role_text(role)
    unused = {name for name in declared if len(re.findall(rf"\b{name}\b", text)) < 2 - (name in required)}
    assert not unused, f"declared but never read: {sorted(unused)}"


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.name)
def test_documented_defaults_are_the_defaults(role):
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    # Templated defaults ("{{ ... }}") are described in words in argument_specs, not repeated.
    wrong = {
        name: (spec["default"], defaults[name])
        for name, spec in specs(role).items()
        if "default" in spec and name in defaults and "{{" not in str(defaults[name])
        if spec["default"] != defaults[name]
    }
    assert not wrong, f"argument_specs default != defaults/main.yml: {wrong}"
