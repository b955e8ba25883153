"""The SQLite engine: one file in the data dir, written by one primary process.

What is SQLite-specific (pragmas, BEGIN IMMEDIATE, the schema version in `user_version`)
stays in this module. One connection per thread; WAL lets readers run while a writer
commits; writers take turns on a process-wide lock, so the row locks services ask for
(`FOR UPDATE ...`, written for PostgreSQL) are dropped from their SQL here.
"""

import functools
import logging
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from primary.errors import ApiError, StorageFull, StorageUnavailable
from primary.store.db import bookkeeping, constraint_conflict
from primary.store.schema import MIGRATIONS, statements

log = logging.getLogger("cifleet.primary")

_ROW_LOCK = re.compile(
    r"\s+FOR\s+UPDATE(?:\s+OF\s+\w+(?:\s*,\s*\w+)*)?(?:\s+SKIP\s+LOCKED|\s+NOWAIT)?"
)


@functools.lru_cache(maxsize=1024)
def _sqlite_sql(sql: str) -> str:
    """The statement without its row locks (see the module's docstring)."""
    return _ROW_LOCK.sub("", sql)


class SqliteConnection:
    """A transaction's connection (db.Connection) over sqlite3."""

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection):
        self.raw = raw

    def execute(self, sql: str, params: Sequence = ()) -> sqlite3.Cursor:
        return self.raw.execute(_sqlite_sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self.raw.executemany(_sqlite_sql(sql), rows)

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        return self.execute(sql, params).fetchone()

    def lock(self, name: str) -> None:
        """Nothing to do: the transaction holds the store's only write lock already."""


class SqliteStore:
    engine = "sqlite"

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        # The primary is the only process that writes the store. Serialising its writers
        # here keeps them out of SQLite's busy handler, which sleeps with backoff (up to
        # 100 ms a try) when two transactions collide.
        self._write_lock = threading.Lock()
        self._write_failed = False  # see take_write_failure
        self.commit_listeners: list[Callable[[list], None]] = []
        # Called after every write transaction with its seconds (from asking for it, so the
        # wait for the write lock counts, to its commit or rollback) and whether it committed.
        self.transaction_observers: list[Callable[[float, bool], None]] = []

    def __str__(self) -> str:
        return str(self.path)

    def connection(self) -> sqlite3.Connection:
        """This thread's sqlite3 connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves, so a transaction is exactly
            # the `with store.transaction()` block and nothing else.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a crash of the process (not of the machine).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[SqliteConnection]:
        """A write transaction; the write lock is taken at BEGIN so no upgrade can deadlock.

        A full or unwritable disk raises StorageFull or StorageUnavailable (and is logged);
        nothing of the transaction is kept, a failed COMMIT included.
        """
        conn = self.connection()
        with bookkeeping(self) as outcome, self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield SqliteConnection(conn)
                    conn.execute("COMMIT")
                    outcome.committed = True
                except BaseException:
                    self._rollback(conn)
                    raise
            except sqlite3.OperationalError as exc:
                failure = self._storage_failure(exc)
                if failure is None:
                    raise
                raise failure from exc
            except sqlite3.IntegrityError as exc:
                raise constraint_conflict(exc) from exc

    def _rollback(self, conn: sqlite3.Connection) -> None:
        # SQLite has already rolled back after some errors (a full disk among them); a second
        # ROLLBACK would fail and hide the error that matters.
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _storage_failure(self, exc: sqlite3.OperationalError) -> ApiError | None:
        """StorageFull / StorageUnavailable for a disk that is full or cannot be written."""
        code = exc.sqlite_errorcode & 0xFF  # the primary result code
        if code not in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY):
            return None
        log.error("cannot write the store %s: %s (%s)", self.path, exc, exc.sqlite_errorname)
        self._write_failed = True
        what = "the change (nothing was written)"
        if code == sqlite3.SQLITE_FULL:
            return StorageFull(f"the primary's disk is full: could not store {what}")
        return StorageUnavailable(f"the primary cannot write its store: could not store {what}")

    def take_write_failure(self) -> bool:
        """Whether a write failed for lack of storage since the last call (then clears it)."""
        with self._write_lock:  # the flag is set under it, in transaction()
            failed, self._write_failed = self._write_failed, False
        return failed

    def query(self, sql: str, params: Sequence = ()) -> list[sqlite3.Row]:
        return self.connection().execute(_sqlite_sql(sql), params).fetchall()

    def query_one(self, sql: str, params: Sequence = ()) -> sqlite3.Row | None:
        return self.connection().execute(_sqlite_sql(sql), params).fetchone()

    def schema_version(self) -> int:
        return self.connection().execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"primary knows ({len(MIGRATIONS)}); upgrade cifleet"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


# The name this class had when it was the only engine (code written since may still use it).
Store = SqliteStore
