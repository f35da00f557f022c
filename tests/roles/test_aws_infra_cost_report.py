"""What provision.yml prints about the money: every host priced from the table, a missing price said, never $0."""

from __future__ import annotations

import yaml
from support.ansible_helpers import REPO, localhost_inventory, run_playbook


def render(tmp_path, hosts: list[dict]) -> str:
    play = [
        {
            "name": "Render the cost report",
            "hosts": "localhost",
            "gather_facts": False,
            "vars_files": [
                str(REPO / "roles/aws_infra/defaults/main.yml"),
                str(REPO / "roles/aws_infra/vars/main.yml"),
            ],
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.copy": {
                        "content": "{{ lookup('ansible.builtin.template', template) }}",
                        "dest": f"{tmp_path}/report.txt",
                        "mode": "0644",
                    },
                }
            ],
        }
    ]
    playbook = tmp_path / "render.yml"
    playbook.write_text(yaml.safe_dump(play))
    chosen = {
        "template": str(REPO / "roles/aws_infra/templates/cost_report.j2"),
        "aws_infra_bucket": "fruitcloud-cost-test",
        "aws_infra_ssh_cidr": "198.51.100.7/32",
        "__aws_infra_hosts": hosts,
    }
    run = run_playbook(str(playbook), localhost_inventory(tmp_path), chosen)
    assert run.returncode == 0, run.output[-3000:]
    return (tmp_path / "report.txt").read_text()


def host(name: str, instance_type: str) -> dict:
    return {
        "tags": {"Name": name, "spark_group": "master"},
        "instance_id": "i-0123",
        "instance_type": instance_type,
        "public_ip_address": "203.0.113.5",
    }


def test_a_priced_host_shows_its_hourly_price_and_the_totals(tmp_path):
    report = render(tmp_path, [host("d-master", "t2.medium")])
    assert "d-master (master): i-0123 t2.medium on-demand 203.0.113.5 $0.0504/h on demand" in report
    # 30 GB of gp3 at $0.088 a month is $0.0036 an hour.
    assert "total while running: $0.0540/h (~$1/day, $39/month); stopped: $2.64/month" in report


def test_a_type_without_a_price_is_named_and_the_total_is_a_lower_bound(tmp_path):
    report = render(tmp_path, [host("d-master", "t2.medium"), host("d-worker-1", "m7i.large")])
    assert "m7i.large on-demand 203.0.113.5 no price for m7i.large in the table" in report
    assert "$0.0000/h" not in report
    assert "total while running: at least $0.0576/h" in report
    assert "without m7i.large, which has no price here" in report
