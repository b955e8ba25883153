"""`cifleet-primary store copy`: move a data dir's fleet from SQLite into PostgreSQL."""

import argparse
import os
import sys

from primary.store.copy import BEFORE_COPY, CopyError, copy_to_postgres
from primary.store.datadir import DataDir
from primary.store.engines import has_password


def add_parser(sub, data_dir_arg) -> None:
    p = sub.add_parser("store", help="move the fleet's store into PostgreSQL")
    actions = p.add_subparsers(dest="action", required=True)
    copy = actions.add_parser(
        "copy",
        help="copy the SQLite store, vault and logs into an empty PostgreSQL database; the "
        "data dir then uses it (stop the primary first)",
    )
    copy.add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST/DB")
    data_dir_arg(copy)


def _serving(data: DataDir) -> int | None:
    """The pid of a primary serving the data dir, if one is."""
    try:
        pid = int(data.pidfile.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def run(args: argparse.Namespace) -> int:
    data = DataDir(args.data_dir.absolute())
    if has_password(args.to):
        print(
            "cifleet-primary store copy: --to: leave the password out of the URL; put it in "
            "~/.pgpass or the file PGPASSFILE names",
            file=sys.stderr,
        )
        return 2
    pid = _serving(data)
    if pid is not None:
        print(
            f"cifleet-primary store copy: a primary (pid {pid}) serves {data.root}; stop it "
            "first (cifleet-primary stop), so nothing changes during the copy",
            file=sys.stderr,
        )
        return 2
    try:
        copied = copy_to_postgres(data, args.to)
    except CopyError as exc:
        print(f"cifleet-primary store copy: {exc}", file=sys.stderr)
        return 2
    rows = sum(copied.rows.values())
    print(
        f"copied {rows} rows of {len(copied.rows)} tables, {copied.vault_entries} vault "
        f"entries, {copied.logs} job logs ({copied.log_bytes} bytes) and {copied.files} static"
        " files"
    )
    print(f"{data.root} now uses the database; `cifleet-primary serve` as before.")
    print(f"the SQLite store, vault and logs are unchanged in {data.root / BEFORE_COPY}")
    return 0
