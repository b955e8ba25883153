"""`cifleet-primary user create|list|disable`: people who log in to the web UI.

The password is read from standard input (or prompted for on a terminal), never from argv.
"""

import argparse
import getpass
import sys

from primary.config import PrimaryConfig
from primary.fleet.users import ROLES, UserError, create_user, disable_user, list_users


def add_parser(sub, data_dir_arg) -> None:
    p = sub.add_parser("user", help="create, list or disable web UI users")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a user; the password comes on stdin")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="viewer")
    data_dir_arg(create)
    data_dir_arg(actions.add_parser("list", help="list users"))
    disable = actions.add_parser("disable", help="disable a user; their logins stop at once")
    disable.add_argument("name")
    data_dir_arg(disable)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UserError("password: the two entries differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def run(args: argparse.Namespace) -> int:
    from primary.context import open_primary

    store = open_primary(PrimaryConfig(data_dir=args.data_dir)).store
    try:
        if args.action == "create":
            create_user(store, args.name, args.role, _read_password())
            print(f"created {args.role} {args.name}")
        elif args.action == "list":
            for u in list_users(store):
                state = f"disabled {u['disabled_at']}" if u["disabled_at"] else "active"
                print(f"{u['name']}  {u['role']}  {state}")
        elif not disable_user(store, args.name):
            raise UserError(f"no active user {args.name!r}")
        else:
            print(f"disabled {args.name}")
    except UserError as exc:
        print(f"cifleet-primary user {args.action}: {exc}", file=sys.stderr)
        return 2
    return 0
