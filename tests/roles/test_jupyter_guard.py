"""The jupyter role refuses to serve beyond the loopback unless told, before it changes anything."""

from __future__ import annotations

import pytest
from support.ansible_helpers import REPO, localhost_inventory, run_playbook


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.5", "::"])
def test_a_bind_address_off_the_loopback_is_refused(tmp_path, address):
    playbook = tmp_path / "jupyter.yml"
    playbook.write_text(
        f"- hosts: localhost\n  gather_facts: false\n  roles:\n    - role: {REPO}/roles/jupyter\n"
        f"      vars:\n        jupyter_ip: '{address}'\n        jupyter_user: fruitcloud-guard-test\n"
    )
    run = run_playbook(str(playbook), localhost_inventory(tmp_path), {})
    assert run.returncode != 0
    message = " ".join(run.output.split())
    assert f"jupyter_ip {address} would serve JupyterLab beyond this host" in message, message[-2000:]
    assert "set jupyter_allow_remote_access=true" in message
    assert run.recap("localhost")["changed"] == 0
    assert "Create the Jupyter user" not in run.output
