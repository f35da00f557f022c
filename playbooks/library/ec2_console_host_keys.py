#!/usr/bin/python
# Copyright: the fruitcloud authors. GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read an EC2 instance's SSH host keys from its console output, where cloud-init prints them at first boot."""

from __future__ import annotations

from ansible_collections.amazon.aws.plugins.module_utils.modules import AnsibleAWSModule

DOCUMENTATION = r"""
module: ec2_console_host_keys
short_description: The SSH host keys an EC2 instance printed to its console
description:
  - Calls C(GetConsoleOutput) and returns the keys between cloud-init's
    C(-----BEGIN SSH HOST KEY KEYS-----) and C(-----END SSH HOST KEY KEYS-----) lines,
    so that the first SSH connection can check the host's key instead of trusting it.
  - No collection module reads the console (amazon.aws and community.aws have none).
  - An instance prints them a minute or two after it starts; until then C(host_keys) is empty:
    retry with C(until).
options:
  instance_id:
    description: The instance.
    required: true
    type: str
extends_documentation_fragment:
  - amazon.aws.common.modules
  - amazon.aws.region.modules
  - amazon.aws.boto3
"""

RETURN = r"""
host_keys:
  description: The public host keys, one C(TYPE BASE64) string each, as known_hosts holds them (comment dropped).
  returned: always
  type: list
  elements: str
"""

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"


def host_keys(console: str) -> list[str]:
    """The keys of the last complete block (a reboot prints it again); lines may carry an ``ec2: `` prefix."""
    keys: list[str] = []
    block: list[str] | None = None
    for raw in console.splitlines():
        line = raw.strip().removeprefix("ec2:").strip()
        if line == BEGIN:
            block = []
        elif line == END and block is not None:
            keys, block = block, None
        elif block is not None and len(line.split()) >= 2:
            block.append(" ".join(line.split()[:2]))
    return keys


def main():
    module = AnsibleAWSModule(
        argument_spec={"instance_id": {"type": "str", "required": True}}, supports_check_mode=True
    )
    client = module.client("ec2")
    try:
        answer = client.get_console_output(InstanceId=module.params["instance_id"], Latest=False)
    except Exception as exc:  # botocore's ClientError and BotoCoreError alike
        module.fail_json_aws(exc, msg=f"Failed to read the console of {module.params['instance_id']}")
    module.exit_json(changed=False, host_keys=host_keys(answer.get("Output", "")))


if __name__ == "__main__":
    main()
