"""Every switch is read through ``| bool``: ``-e name=false`` arrives as the string "false", which Jinja finds true.

The switches are the variables whose documented type is bool (every role's
argument_specs) or whose default is a YAML boolean (defaults, group_vars); each
place a role or playbook reads one must convert it. Prose that names a switch
as a user types it (``name=true`` in a message) is not a read.
"""

from __future__ import annotations

import re

import yaml
from support.ansible_helpers import REPO

SOURCES = [REPO / "roles", REPO / "playbooks"]


def switches() -> set[str]:
    names = set()
    for specs in (REPO / "roles").glob("*/meta/argument_specs.yml"):
        options = yaml.safe_load(specs.read_text())["argument_specs"]["main"]["options"]
        names |= {name for name, spec in options.items() if spec.get("type") == "bool"}
    for defaults in [*(REPO / "roles").glob("*/defaults/main.yml"), REPO / "playbooks" / "group_vars" / "all.yml"]:
        values = yaml.safe_load(defaults.read_text()) or {}
        names |= {name for name, value in values.items() if isinstance(value, bool)}
    return names


def unconverted_reads(text: str, name: str) -> list[str]:
    """Lines reading ``name`` without ``| bool`` right after it (definitions, comments, ``name=...`` prose aside)."""
    found = []
    for line in text.splitlines():
        code = line.split("#", 1)[0] if not line.lstrip().startswith("{#") else ""
        if re.match(rf"\s*(- )?{name}:", code):
            continue
        for match in re.finditer(rf"\b{name}\b", code):
            after = code[match.end() :]
            if re.match(r"\s*\|\s*bool\b", after) or re.match(r"=(?!=)", after):
                continue
            found.append(line.strip())
    return found


def test_the_switches_are_found():
    assert {"aws_infra_allow_ssh_from_anywhere", "aws_infra_idle_stop", "spark_authenticate"} <= switches()


def test_every_switch_is_read_through_bool():
    names = switches()
    offenders = [
        f"{path.relative_to(REPO)}: {line}"
        for root in SOURCES
        for path in sorted(root.rglob("*"))
        if path.suffix in {".yml", ".j2"} and "argument_specs" not in path.name
        for name in names
        for line in unconverted_reads(path.read_text(), name)
    ]
    assert offenders == []


def test_a_read_without_bool_is_caught():
    text = "when: aws_infra_idle_stop and x\nmsg: set aws_infra_idle_stop=false\nok: '{{ aws_infra_idle_stop | bool }}'"
    assert unconverted_reads(text, "aws_infra_idle_stop") == ["when: aws_infra_idle_stop and x"]
