"""The SQLite store: connections, transactions and the versioned schema.

All SQL that is SQLite-specific (pragmas, BEGIN IMMEDIATE) stays in this module, so another
database can be put behind it later. One connection per thread; WAL lets readers run while a
writer commits.
"""

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from primary.errors import ApiError, StorageFull, StorageUnavailable

log = logging.getLogger("cifleet.primary")

# What the running transaction of each thread noted for after its commit (after_commit).
_notes = threading.local()


def after_commit(note: object) -> None:
    """Note something for the store's commit listeners, from inside a transaction of this
    thread: they get a transaction's notes once it has committed and the write lock is free
    (slow work, such as fsyncs, holds up no writer), and none if it rolled back."""
    _notes.items.append(note)


# Each entry moves the schema one version up; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL,             -- JSON list
        slots INTEGER NOT NULL,
        version TEXT NOT NULL,
        cert_serial TEXT NOT NULL,      -- hex; only this certificate is accepted
        cert_not_after REAL NOT NULL,
        locked INTEGER NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0,
        load TEXT,                      -- JSON from the last poll
        created_at REAL NOT NULL,
        last_contact REAL
    );
    CREATE TABLE pipelines (
        name TEXT PRIMARY KEY,
        definition TEXT NOT NULL,       -- the YAML as submitted
        spec TEXT NOT NULL,             -- normalised JSON
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        spec TEXT NOT NULL,             -- the pipeline's spec when the run was created
        tags TEXT NOT NULL,             -- JSON list, copied from spec for the planner
        state TEXT NOT NULL,
        reason TEXT,                    -- why it waits, or how it ended
        placement TEXT,                 -- JSON list: the scheduler's reasons
        worker_id TEXT,
        worker_name TEXT,
        attempt INTEGER NOT NULL DEFAULT 0,
        lost_count INTEGER NOT NULL DEFAULT 0,
        lease_expires REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        finished_by_worker INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        assigned_at REAL,
        started_at REAL,
        finished_at REAL
    );
    CREATE INDEX runs_by_state ON runs (state, id);
    CREATE INDEX runs_by_worker ON runs (worker_id, state);
    CREATE TABLE jobs (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        started_at REAL,
        finished_at REAL,
        PRIMARY KEY (run_id, name)
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: sticky homes, cache clearing, static files, prepare notes.
    """
    ALTER TABLE pipelines ADD COLUMN home_worker_id TEXT;
    ALTER TABLE pipelines ADD COLUMN cache_cleared INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN queued_at REAL;
    ALTER TABLE runs ADD COLUMN clean_workspace INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN prepare_notes TEXT;
    UPDATE runs SET queued_at = created_at;
    CREATE TABLE pipeline_files (
        pipeline TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (pipeline, path)
    );
    """,
    # 3: one row per assignment, so a run's history (and who may still write what) is known.
    """
    CREATE TABLE attempts (
        run_id INTEGER NOT NULL REFERENCES runs (id),
        attempt INTEGER NOT NULL,
        worker_id TEXT NOT NULL,
        worker_name TEXT NOT NULL,
        assigned_at REAL NOT NULL,
        ended_at REAL,
        outcome TEXT,                   -- a final run state, or taken back / lost
        PRIMARY KEY (run_id, attempt)
    );
    INSERT INTO attempts (run_id, attempt, worker_id, worker_name, assigned_at)
        SELECT id, attempt, worker_id, worker_name, COALESCE(assigned_at, created_at)
        FROM runs WHERE attempt > 0 AND worker_id IS NOT NULL;
    """,
    # 4: certificate renewal keeps the previous certificate valid until it expires.
    """
    ALTER TABLE workers ADD COLUMN prev_cert_serial TEXT;
    ALTER TABLE workers ADD COLUMN prev_cert_not_after REAL;
    """,
    # 5: people who log in to the web UI, with the same roles as API tokens.
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        password_hash TEXT NOT NULL,    -- scrypt$N$r$p$salt$hash
        created_at REAL NOT NULL,
        disabled_at REAL
    );
    """,
    # 6: faults. The agent process a worker runs (a new one means the old one's runs are
    # gone), and what the run log showed of an attempt that was lost or taken back, so the
    # log still shows it after the next attempt replaced the run's placement and job states.
    """
    ALTER TABLE workers ADD COLUMN session TEXT;
    ALTER TABLE attempts ADD COLUMN reason TEXT;
    ALTER TABLE attempts ADD COLUMN placement TEXT;     -- JSON list, as runs.placement
    ALTER TABLE attempts ADD COLUMN prepare_notes TEXT; -- JSON list, as runs.prepare_notes
    ALTER TABLE attempts ADD COLUMN jobs TEXT;          -- JSON: [{name, state, exit_code, started}]
    """,
    # 7: web UI sessions, so logging out (or a restart) ends a session for good: a copied
    # cookie of an ended session is refused. Only a hash of the session id is kept.
    """
    CREATE TABLE ui_sessions (
        sid_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 8: a job, or a stolen worker key, reaches no further than its own runs (issue 11).
    # Who a worker's jobs run as (reported by its agent), whether an admin allows root jobs
    # there, when its certificate was renewed (the superseded one is accepted only for the
    # switch-over after), and why its credentials are in conflict (a copied key was used).
    # Names: none may look like a worker id, and none may differ from another only in
    # case. Existing rows that break either are renamed (docs/api.md): a name in the form of
    # an id becomes renamed-ID; of names equal but for case, the oldest keeps its name and
    # the others become NAME-ID (cut to 45 characters first), so every name stays unique.
    """
    ALTER TABLE workers ADD COLUMN job_identity TEXT;       -- JSON from the agent's polls
    ALTER TABLE workers ADD COLUMN root_jobs INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE workers ADD COLUMN cert_renewed_at REAL;
    ALTER TABLE workers ADD COLUMN conflict_at REAL;
    ALTER TABLE workers ADD COLUMN conflict_reason TEXT;
    ALTER TABLE runs ADD COLUMN run_as_root INTEGER NOT NULL DEFAULT 0;
    UPDATE workers SET name = 'renamed-' || id WHERE length(name) = 18
        AND lower(name) GLOB 'w-*' AND NOT substr(lower(name), 3) GLOB '*[^0-9a-f]*';
    UPDATE workers SET name = substr(name, 1, 45) || '-' || id WHERE EXISTS (
        SELECT 1 FROM workers AS older WHERE lower(older.name) = lower(workers.name)
        AND (older.created_at < workers.created_at
             OR (older.created_at = workers.created_at AND older.id < workers.id)));
    CREATE UNIQUE INDEX workers_by_lower_name ON workers (lower(name));
    """,
]


class Store:
    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()
        # The primary is the only process that writes the store. Serialising its writers
        # here keeps them out of SQLite's busy handler, which sleeps with backoff (up to
        # 100 ms a try) when two transactions collide.
        self._write_lock = threading.Lock()
        self._write_failed = False  # see take_write_failure
        # Called with the notes (after_commit) of each committed transaction that made any.
        self.commit_listeners: list[Callable[[list], None]] = []
        # Called after every write transaction with its seconds (from asking for it, so the
        # wait for the write lock counts, to its commit or rollback) and whether it committed.
        self.transaction_observers: list[Callable[[float, bool], None]] = []

    def connection(self) -> sqlite3.Connection:
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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; the write lock is taken at BEGIN so no upgrade can deadlock.

        A full or unwritable disk raises StorageFull or StorageUnavailable (and is logged);
        nothing of the transaction is kept, a failed COMMIT included.
        """
        conn = self.connection()
        notes: list = []
        _notes.items = notes
        asked = time.perf_counter()
        committed = False
        try:
            with self._write_lock:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        yield conn
                        conn.execute("COMMIT")
                        committed = True
                    except BaseException:
                        self._rollback(conn)
                        raise
                except sqlite3.OperationalError as exc:
                    failure = self._storage_failure(exc)
                    if failure is None:
                        raise
                    raise failure from exc
        finally:
            _notes.items = None
            for observe in self.transaction_observers:
                observe(time.perf_counter() - asked, committed)
        if notes:
            for listener in self.commit_listeners:
                listener(notes)

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

    def query(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.connection().execute(sql, params).fetchone()

    def migrate(self) -> None:
        with self.transaction() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the store {self.path} has schema version {version}, newer than this "
                    f"primary knows ({len(MIGRATIONS)}); upgrade cifleet"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _statements(script: str) -> list[str]:
    """Split a script into statements. Not executescript(): it would COMMIT our transaction."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
