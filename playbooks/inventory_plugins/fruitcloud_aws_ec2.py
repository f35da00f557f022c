# Copyright: the fruitcloud authors. GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""amazon.aws.aws_ec2, except that no AWS credentials is one warning, not a page of them.

Without credentials aws_ec2 fails, and ansible-core then tries the file with every
other inventory plugin (yaml, ini), printing each one's failure with its cause:
about twenty lines that never say "credentials" where a user looks. This plugin
lists no host then and says so once, with what to do; any other AWS error
(wrong keys, no permission, no network) still fails as aws_ec2 fails.
"""

from __future__ import annotations

import botocore.exceptions
from ansible.errors import AnsibleError
from ansible_collections.amazon.aws.plugins.inventory import aws_ec2

NAME = "fruitcloud_aws_ec2"
DOCUMENTATION = aws_ec2.DOCUMENTATION.replace("name: aws_ec2", f"name: {NAME}", 1)
NO_CREDENTIALS = str(botocore.exceptions.NoCredentialsError())


class InventoryModule(aws_ec2.InventoryModule):
    NAME = NAME

    def _get_instances_by_region(self, regions, filters, strict_permissions):
        try:
            return super()._get_instances_by_region(regions, filters, strict_permissions)
        except AnsibleError as error:
            if NO_CREDENTIALS not in str(error):
                raise
            self.display.warning(
                "No AWS credentials found (environment, ~/.aws, instance profile): the inventory lists no EC2 "
                "host. Set AWS_PROFILE (or run `aws configure`) and run again."
            )
            return []
