#!/usr/bin/python
"""Ansible module: make the agent's user, folders and small files on a host what the role
wants, in one round trip (module_utils/cifleet_worker_layout.py)."""

DOCUMENTATION = r"""
module: cifleet_worker_layout
short_description: The cifleet agent's user, folders and small files, in one round trip.
description:
  - Creates the agent's system user and group when missing, and makes each folder and file
    exist with the given owner, group, mode (and content, for files). Files are replaced
    atomically. The probe module reports the same plan without changing anything.
options:
  user:
    description: The system user to create when missing (name, group, home); none for no user.
    type: dict
  dirs:
    description: Folders, each with path, owner, group, mode.
    type: list
    elements: dict
    default: []
  files:
    description: Files, each with path, content, owner, group, mode.
    type: list
    elements: dict
    default: []
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.cifleet_worker_layout import apply, plan


def main():
    module = AnsibleModule(
        argument_spec={
            "user": {"type": "dict"},
            "dirs": {"type": "list", "elements": "dict", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
        },
        supports_check_mode=True,
    )
    spec = {key: module.params[key] for key in ("user", "dirs", "files")}
    try:
        changes = plan(spec) if module.check_mode else apply(spec)
    except OSError as e:
        module.fail_json(msg=str(e))
    module.exit_json(changed=bool(changes), changes=changes)


if __name__ == "__main__":
    main()
