"""`cifleet-primary retention show|set` and `cifleet-primary prune [--dry-run]`: the fleet's
retention policy, and a pass of the janitor now. They open the store of the data dir, as
`user` does; with several primaries any one's data dir will do (the policy is in the store).
"""

import argparse
import json
import os
import sys

from primary.config import PrimaryConfig
from primary.errors import ApiError


def add_parser(sub, data_dir_arg) -> None:
    p = sub.add_parser("retention", help="show or set the fleet's retention policy")
    actions = p.add_subparsers(dest="action", required=True)
    data_dir_arg(actions.add_parser("show", help="print the policy (JSON)"))
    setter = actions.add_parser(
        "set", help="replace the policy (a limit not given is no limit; none: keep everything)"
    )
    setter.add_argument("--days", type=int, help="prune finished runs older than this")
    setter.add_argument("--runs", type=int, help="keep this many newest runs per pipeline")
    setter.add_argument(
        "--workspace-days",
        type=int,
        help="forget a pipeline's home (its workspace is deleted) unused for this long",
    )
    data_dir_arg(setter)
    p = sub.add_parser("prune", help="delete what the retention policy no longer keeps")
    p.add_argument("--dry-run", action="store_true", help="print what would go; delete nothing")
    data_dir_arg(p)


def run(args: argparse.Namespace) -> int:
    from primary.context import open_primary
    from primary.fleet import presence
    from primary.runs import janitor, retention

    primary = open_primary(PrimaryConfig(data_dir=args.data_dir))
    command = "prune" if args.command == "prune" else f"retention {args.action}"
    try:
        if args.command == "retention" and args.action == "show":
            print(json.dumps(retention.fleet_policy(primary), sort_keys=True))
        elif args.command == "retention":
            body = {"days": args.days, "runs": args.runs, "workspace_days": args.workspace_days}
            policy = retention.set_fleet_policy(primary, body)
            print(json.dumps(policy, sort_keys=True))
        elif args.dry_run:
            found = retention.would_prune(primary)
            for item in found:
                keep = " ".join(f"{k}={v}" for k, v in item["keep"].items())
                print(
                    f"{item['pipeline']}: {item['runs']} run(s), ids {item['first']}"
                    f"..{item['last']} (keep {keep})"
                )
            homes = retention.would_forget_homes(primary)
            if homes:
                print(f"would forget the unused home of: {' '.join(homes)}")
            print(f"would prune {sum(i['runs'] for i in found)} run(s); nothing was deleted")
        else:
            report = janitor.prune(primary, f"{presence.name_of(primary)}:cli:{os.getpid()}")
            if report is None:
                print(f"cifleet-primary {command}: another pass is running", file=sys.stderr)
                return 1
            print(
                f"pruned {report.runs} run(s), {report.attempts} attempt(s),"
                f" {report.log_bytes} log bytes; forgot {len(report.homes_forgotten)} home(s)"
            )
    except ApiError as exc:
        print(f"cifleet-primary {command}: {exc.message}", file=sys.stderr)
        return 2
    return 0
