"""Run ansible-playbook and ansible-inventory from tests, against moto on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from motoserver import TEST_CREDENTIALS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    def recap(self, host: str = "localhost") -> dict[str, int]:
        match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", self.output, re.MULTILINE)
        assert match, f"no play recap for {host} in:\n{self.output[-3000:]}"
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def ansible_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        **TEST_CREDENTIALS,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        **(extra or {}),
    }


def localhost_inventory(directory: Path) -> Path:
    path = directory / "localhost.yml"
    path.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        "      ansible_python_interpreter: '{{ ansible_playbook_python }}'\n"
    )
    return path


def run_playbook(playbook: str, inventory: Path, extra_vars: dict, *args: str, env=None) -> PlaybookRun:
    command = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(REPO / "playbooks" / playbook),
        "-e",
        json.dumps(extra_vars),
        *args,
    ]
    result = subprocess.run(command, env=ansible_env(env), capture_output=True, text=True, cwd=REPO, check=False)
    return PlaybookRun(result.returncode, result.stdout + result.stderr)
