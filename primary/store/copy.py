"""`cifleet-primary store copy`: move a data dir's fleet from SQLite (its store, vault and
job logs) into an empty PostgreSQL database, in one transaction: the database ends up with
all of it or with nothing.

Every table is copied as it is (ids kept, identity counters moved past them), the vault's
entries (all but the server key, which stays this primary's) are sealed into the database
with the same vault key, and every job log file and static file becomes chunks of the same
bytes. Then the
data dir names the database in its config, keeps the server key alone in its vault file,
and the SQLite-era files move aside into BEFORE_COPY (nothing is deleted).
"""

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.home import write_atomic
from primary.store import vault as vault_mod
from primary.store.datadir import DataDir
from primary.store.logs import WRITE_PIECE
from primary.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from primary.store.postgres import PostgresStore

BEFORE_COPY = "before-copy"
FILES_DIR = "files"  # static files (primary/pipelines/static_files.py)
FILE_CHUNK = 1 << 20
# Kept in the database's own way: not copied as rows.
# primaries: each announces itself; janitor_lease: a pass in progress is no one's after it.
_NOT_COPIED = ("sqlite_sequence", "primaries", "janitor_lease")


class CopyError(Exception):
    pass


@dataclass
class Copied:
    rows: dict[str, int] = field(default_factory=dict)
    vault_entries: int = 0
    logs: int = 0
    log_bytes: int = 0
    files: int = 0


def copy_to_postgres(data: DataDir, url: str) -> Copied:
    if data.shared_store():
        raise CopyError(f"{data.root} keeps its fleet in a database already")
    if not data.store.exists():
        raise CopyError(f"{data.root} has no SQLite store to copy")
    key = vault_mod.load_key(data.vault_key)
    local = vault_mod.Vault.open(data.vault, key)
    source = SqliteStore(data.store)
    source.migrate()  # the same schema version on both sides
    from primary.store.postgres import PostgresStore  # psycopg: only when copying

    target = PostgresStore(url)
    try:
        _refuse_unless_empty(target)
        target.migrate()
        copied = Copied()
        with target.transaction() as conn:
            for table in _tables(source):
                copied.rows[table] = _copy_table(source, conn.raw, table)
            _move_identities(source, conn.raw)
            entries = _vault_entries(local, data)
            vault_mod.StoreVault(target, key).put_new(conn, entries)
            copied.vault_entries = len(entries)
            copied.logs, copied.log_bytes = _copy_logs(data.logs, conn.raw)
            copied.files = _copy_files(data.root / FILES_DIR, conn)
    finally:
        target.close()
        source.close()
    _switch(data, local, key, url)
    return copied


def _refuse_unless_empty(target: "PostgresStore") -> None:
    tables = target.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_name <> 'cifleet_schema' LIMIT 1"
    )
    if tables:
        raise CopyError(f"the database {target} is not empty: give an empty one")


def _tables(source: SqliteStore) -> list[str]:
    """In the order they were made, so a table comes after those it refers to."""
    return [
        r["name"]
        for r in source.query(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " ORDER BY rowid"
        )
        if r["name"] not in _NOT_COPIED
    ]


def _copy_table(source: SqliteStore, raw, table: str) -> int:
    cursor = source.connection().execute(f'SELECT * FROM "{table}"')
    columns = ", ".join(f'"{c[0]}"' for c in cursor.description)
    count = 0
    with raw.cursor() as cur, cur.copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
        for row in cursor:
            copy.write_row(tuple(row))
            count += 1
    return count


def _move_identities(source: SqliteStore, raw) -> None:
    """Identity columns continue after the highest id SQLite ever handed out (its
    sqlite_sequence), so no new row takes an old id."""
    for row in source.query("SELECT name, seq FROM sqlite_sequence"):
        raw.execute(
            "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, true)",
            (row["name"], max(row["seq"], 1)),
        )


def _vault_entries(local: vault_mod.Vault, data: DataDir) -> dict:
    entries = {
        name: local.get(name) for name in local.names() if name not in vault_mod.LOCAL_ENTRIES
    }
    entries["ca_cert"] = data.ca_cert.read_text()
    return entries


def _copy_logs(root: Path, raw) -> tuple[int, int]:
    """Every job log file, as chunks of WRITE_PIECE bytes at their offsets."""
    logs = total = 0
    sizes = []
    with raw.cursor() as cur:
        with cur.copy("COPY log_chunks (run_id, attempt, job, start, data) FROM STDIN") as copy:
            for path in sorted(root.glob("*/*/*.log")):
                run_id, attempt = path.parent.parent.name, path.parent.name
                if not (run_id.isdigit() and attempt.isdigit()):
                    continue
                start = last = 0
                with open(path, "rb") as f:
                    while piece := f.read(WRITE_PIECE):
                        copy.write_row((int(run_id), int(attempt), path.stem, start, piece))
                        last, start = start, start + len(piece)
                sizes.append((int(run_id), int(attempt), path.stem, start, last))
                logs += 1
                total += start
        with cur.copy("COPY job_logs (run_id, attempt, job, size, last_start) FROM STDIN") as copy:
            for row in sizes:
                copy.write_row(row)
    return logs, total


def _copy_files(root: Path, conn) -> int:
    """Every pipeline's static files, as chunks in the database (a fleet's primaries all
    serve them from there)."""
    copied = 0
    for row in conn.query("SELECT pipeline, path FROM pipeline_files ORDER BY pipeline, path"):
        path = root / row["pipeline"] / row["path"]
        blob = secrets.token_hex(8)
        with open(path, "rb") as f:
            seq = 0
            while chunk := f.read(FILE_CHUNK):
                conn.execute(
                    "INSERT INTO file_chunks (blob, seq, data) VALUES (?, ?, ?)", (blob, seq, chunk)
                )
                seq += 1
        conn.execute(
            "UPDATE pipeline_files SET blob = ? WHERE pipeline = ? AND path = ?",
            (blob, row["pipeline"], row["path"]),
        )
        copied += 1
    return copied


def _switch(data: DataDir, local: vault_mod.Vault, key: bytes, url: str) -> None:
    """The data dir now opens the database; the SQLite-era files go aside, unchanged."""
    server_key = local.get("server_key")
    aside = data.root / BEFORE_COPY
    aside.mkdir(mode=0o700)
    files = data.root / FILES_DIR
    for path in (data.store, *data.root.glob("cifleet.db-*"), data.logs, data.vault, files):
        if path.exists():
            os.rename(path, aside / path.name)
    vault_mod.Vault.create(data.vault, key, {"server_key": server_key})
    settings = {**data.settings(), "store": url}
    write_atomic(data.config, json.dumps(settings, indent=2).encode() + b"\n")
