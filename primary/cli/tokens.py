"""`cifleet-primary token create|list|revoke`: admin API tokens, on the data dir's store."""

import argparse
import sys

from primary.config import PrimaryConfig
from primary.fleet.tokens import ROLES, create_token, list_tokens, revoke_token


def add_parser(sub, data_dir_arg) -> None:
    p = sub.add_parser("token", help="create, list or revoke admin API tokens")
    actions = p.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="print a new token (shown once)")
    create.add_argument("--name", required=True, help="who or what the token is for")
    create.add_argument("--role", choices=ROLES, default="viewer")
    data_dir_arg(create)
    data_dir_arg(actions.add_parser("list", help="list tokens (never their values)"))
    revoke = actions.add_parser("revoke", help="revoke a token by id; it stops working at once")
    revoke.add_argument("id", type=int)
    data_dir_arg(revoke)


def run(args: argparse.Namespace) -> int:
    from primary.context import open_primary

    store = open_primary(PrimaryConfig(data_dir=args.data_dir)).store
    if args.action == "create":
        print(create_token(store, args.name, args.role))
        return 0
    if args.action == "list":
        for t in list_tokens(store):
            state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "live"
            print(f"{t['id']}  {t['role']:7}  {state:8}  {t['name']}  (created {t['created_at']})")
        return 0
    if revoke_token(store, args.id):
        print(f"token {args.id} revoked")
        return 0
    print(f"cifleet-primary token revoke: no live token with id {args.id}", file=sys.stderr)
    return 1
