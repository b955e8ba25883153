"""The PostgreSQL engine: a database that several primaries share.

psycopg 3, READ COMMITTED (PostgreSQL's default), explicit BEGIN/COMMIT on connections in
autocommit mode, so a transaction is exactly the `with store.transaction()` block. Writers
of different primaries run at once: what keeps them apart is row locks the services take
(`FOR UPDATE`, `SKIP LOCKED`) and named advisory locks (`Connection.lock`); the model is in
docs/design.md ("Store"). Services write `?` placeholders; they become psycopg's `%s` here.

Connections come from a small pool of our own (pg_pool.py).
"""

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import errors as pg_errors

from primary.errors import ApiError, BadRequest, StorageFull, StorageUnavailable
from primary.store.db import bookkeeping, constraint_conflict
from primary.store.pg_pool import ConnectionPool, PoolExhausted
from primary.store.schema import MIGRATIONS, POSTGRES_AFTER, postgres_ddl, statements

log = logging.getLogger("cifleet.primary")

# Connections a primary keeps open to the database (each listener thread borrows one per
# statement or transaction; a held long poll holds none).
POOL_SIZE = 16
# How long a caller waits for a free connection when all POOL_SIZE are busy.
POOL_WAIT = 5.0
CONNECT_TIMEOUT = 5  # seconds; libpq's connect_timeout
# Every wait in the server is bounded: a statement, a lock, a transaction left open by a
# primary that hangs (one that dies is noticed by its closed socket).
SESSION_OPTIONS = (
    "-c statement_timeout=30s -c lock_timeout=10s -c idle_in_transaction_session_timeout=60s"
)
# A failing store is logged at most this often (seconds), with the count of failures between.
LOG_FAILURES_EVERY = 5.0
# A dead server or a cut network is noticed within about 20 s on an idle connection.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 2}  # fmt: skip


@functools.lru_cache(maxsize=1024)
def postgres_sql(sql: str) -> str:
    """A service's statement as psycopg takes it: `?` (outside quotes) becomes `%s`, and a
    literal `%` is doubled."""
    out, quote = [], None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


def lock_key(name: str) -> int:
    """The advisory lock number of a named lock: stable, and unlikely to be another
    application's in the same database."""
    digest = hashlib.sha256(b"cifleet:" + name.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def redact(url: str) -> str:
    """The URL without a password, for messages."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


class PgRow:
    """A row as sqlite3.Row has it: by column name or position, `dict(row)`, iteration over
    the values."""

    __slots__ = ("_columns", "_values")

    def __init__(self, columns: dict[str, int], values: Sequence):
        self._columns = columns
        self._values = values

    def __getitem__(self, key: str | int):
        if isinstance(key, str):
            return self._values[self._columns[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._columns)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"PgRow({dict(self)!r})"


def _row_factory(cursor) -> Callable[[Sequence], PgRow]:
    # The names straight from the result: cursor.description builds an object per column
    # per statement, a fifth of the client's time for `SELECT *` of a run.
    result = cursor.pgresult
    columns: dict[str, int] = {}
    for i in range(result.nfields if result is not None else 0):
        name = result.fname(i)  # None for the columns of a COPY
        if name is not None:
            # The first of two equal names wins, as in sqlite3.Row.
            columns.setdefault(name.decode(), i)
    return functools.partial(PgRow, columns)


class PostgresConnection:
    """A transaction's connection (db.Connection) over psycopg."""

    __slots__ = ("raw",)

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw

    def execute(self, sql: str, params: Sequence = ()) -> psycopg.Cursor:
        return self.raw.execute(postgres_sql(sql), params)

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        with self.raw.cursor() as cur:
            cur.executemany(postgres_sql(sql), rows)

    def query(self, sql: str, params: Sequence = ()) -> list[PgRow]:
        return self.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence = ()) -> PgRow | None:
        return self.execute(sql, params).fetchone()

    def lock(self, name: str) -> None:
        self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(name),))


class PostgresStore:
    engine = "postgresql"

    def __init__(self, url: str, pool_size: int = POOL_SIZE, **session: str):
        self.url = url
        self._settings = session
        self._local = threading.local()
        self._write_failed = False
        self._flag_lock = threading.Lock()
        self._logged_at = -LOG_FAILURES_EVERY
        self._unlogged = 0
        self.commit_listeners: list[Callable[[list], None]] = []
        self.transaction_observers: list[Callable[[float, bool], None]] = []
        self.pool = ConnectionPool(self.connect, pool_size, POOL_WAIT)

    def __str__(self) -> str:
        return redact(self.url)

    def connect(self, **settings: str) -> psycopg.Connection:
        """A new connection in autocommit mode with this store's session settings, then
        the URL's own `options` (an operator's choice wins), then `settings` (what a pool
        needs, e.g. synchronous_commit for log writes)."""
        given = psycopg.conninfo.conninfo_to_dict(self.url).get("options") or ""
        options = " ".join(
            [
                SESSION_OPTIONS,
                given,
                *(f"-c {k}={v}" for k, v in {**self._settings, **settings}.items()),
            ]
        )
        return psycopg.connect(
            self.url,
            autocommit=True,
            row_factory=_row_factory,
            connect_timeout=CONNECT_TIMEOUT,
            options=options,
            application_name="cifleet-primary",
            **KEEPALIVES,
        )

    # -- borrowing connections -----------------------------------------------------------

    @contextmanager
    def borrow(self, pool: ConnectionPool | None = None) -> Iterator[psycopg.Connection]:
        """A connection of `pool` (this store's own by default) for one statement or
        transaction. Storage failures (the server down, out of disk, a timeout) become
        StorageFull / StorageUnavailable, and are logged."""
        pool = pool or self.pool
        try:
            conn = pool.get()
        except (psycopg.OperationalError, PoolExhausted) as exc:
            raise self._failure(exc) from exc
        try:
            yield conn
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                pool.discard_idle()
            raise self.storage_error(exc) from exc
        finally:
            pool.put(conn)

    def storage_error(self, exc: psycopg.Error) -> Exception:
        """What a psycopg error means for the caller: a storage failure, a conflict, or (a
        bug of ours) itself."""
        if isinstance(exc, pg_errors.IntegrityError):
            return constraint_conflict(exc)
        if isinstance(exc, psycopg.DataError):
            # A value PostgreSQL cannot keep (a NUL in a string, a number out of range) that
            # a service let through: the caller's input, refused, nothing written.
            log.warning("the store refused a value: %s", exc)
            return BadRequest(f"a value the store cannot keep: {exc}")
        if isinstance(exc, psycopg.OperationalError | pg_errors.ReadOnlySqlTransaction):
            return self._failure(exc)
        return exc

    def _failure(self, exc: Exception) -> ApiError:
        what = "could not store the change (nothing was written)"
        self._log_failure(str(exc).strip() or type(exc).__name__)
        if isinstance(exc, pg_errors.TransactionRollback):  # a deadlock, a serialisation failure
            return StorageUnavailable(f"the store was busy with a conflicting change: {what}")
        with self._flag_lock:
            self._write_failed = True
        if isinstance(exc, pg_errors.DiskFull):
            return StorageFull(f"the primary's database is out of disk space: {what}")
        return StorageUnavailable(f"the primary cannot reach its database: {what}")

    def _log_failure(self, why: str) -> None:
        """One line per LOG_FAILURES_EVERY seconds: in an outage every call fails alike."""
        with self._flag_lock:
            now = time.monotonic()
            if now - self._logged_at < LOG_FAILURES_EVERY:
                self._unlogged += 1
                return
            more, self._unlogged, self._logged_at = self._unlogged, 0, now
        also = f" ({more} more failures since the last line)" if more else ""
        log.error("the store %s failed: %s%s", self, why, also)

    def take_write_failure(self) -> bool:
        with self._flag_lock:
            failed, self._write_failed = self._write_failed, False
        return failed

    # -- the interface -------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[PostgresConnection]:
        if getattr(self._local, "conn", None) is not None:
            raise RuntimeError("a transaction is open on this thread already")
        with bookkeeping(self) as outcome, self.borrow() as raw:
            raw.execute("BEGIN")
            conn = PostgresConnection(raw)
            self._local.conn = conn
            try:
                yield conn
                raw.execute("COMMIT")
                outcome.committed = True
            except BaseException:
                if not raw.broken and not raw.closed:
                    raw.execute("ROLLBACK")
                raise
            finally:
                self._local.conn = None

    def query(self, sql: str, params: Sequence = ()) -> list[PgRow]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn.query(sql, params)
        with self.borrow() as raw:
            return raw.execute(postgres_sql(sql), params).fetchall()

    def query_one(self, sql: str, params: Sequence = ()) -> PgRow | None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn.query_one(sql, params)
        with self.borrow() as raw:
            return raw.execute(postgres_sql(sql), params).fetchone()

    def schema_version(self) -> int:
        row = self.query_one(
            "SELECT version FROM cifleet_schema"
            if self.query_one("SELECT to_regclass('cifleet_schema') IS NOT NULL AS there")["there"]
            else "SELECT 0 AS version"
        )
        return row["version"] if row else 0

    def migrate(self) -> None:
        with self.transaction() as conn:
            conn.lock("migrate")  # two primaries starting at once: one migrates
            conn.execute("CREATE TABLE IF NOT EXISTS cifleet_schema (version BIGINT NOT NULL)")
            row = conn.query_one("SELECT version FROM cifleet_schema")
            if row is None:
                conn.execute("INSERT INTO cifleet_schema (version) VALUES (0)")
            version = row["version"] if row else 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the store {self} has schema version {version}, newer than this "
                    f"primary knows ({len(MIGRATIONS)}); upgrade cifleet"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in statements(script):
                    conn.raw.execute(postgres_ddl(statement))
                for statement in POSTGRES_AFTER.get(number, []):
                    conn.raw.execute(statement)
                conn.execute("UPDATE cifleet_schema SET version = ?", (number,))

    def close(self) -> None:
        self.pool.close()
