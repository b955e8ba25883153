"""Job logs in PostgreSQL, where every primary of the fleet reads them: chunks of bytes at
their offsets (`log_chunks`), and each job log's size (`job_logs`), with the same offset
protocol as the files of `logs.py` (LogStore): bytes we have are skipped, a chunk beyond
our end is refused (LogGap), a short body keeps what came.

A piece of a request body is read with no transaction open, then written in one: the job
log's `job_logs` row is locked (FOR UPDATE), so appends to one job from any primary take
turns and no byte is written twice or at the wrong offset. A small piece is added to the
last chunk while that stays under MERGE_BELOW (a job printing a line at a time makes a few
chunks, not a row per line); a large one is a chunk of its own, written once.

Durability: log writes commit with synchronous_commit off (no WAL flush per chunk): a
crash of the database server may lose the last moments of them, as a crash of the host
may lose the last writes of a log file. The agent keeps its spool until the run's finish,
and a shorter log is answered with 416 log_gap, so it resends. A job's final status is a
synchronous commit, which flushes the WAL up to it, so it puts the job's log on disk too:
`sync` has nothing left to do.
"""

import logging
from collections.abc import Callable, Iterator

from primary.store.logs import LogGap, ShortBody, log_short_chunk, pieces
from primary.store.pg_pool import ConnectionPool
from primary.store.postgres import POOL_WAIT, PostgresStore, postgres_sql

log = logging.getLogger("cifleet.primary")

MERGE_BELOW = 64 << 10
READ_ROWS = 8  # chunks fetched per query while reading (at most 8 x 256 KiB)
POOL_SIZE = 8
_KEY = "run_id = ? AND attempt = ? AND job = ?"


class PostgresLogStore:
    def __init__(self, store: PostgresStore, pool_size: int = POOL_SIZE):
        self.store = store
        self._pool = ConnectionPool(
            lambda: store.connect(synchronous_commit="off"), pool_size, POOL_WAIT
        )

    def close(self) -> None:
        self._pool.close()

    def _query(self, sql: str, params: tuple) -> list:
        with self.store.borrow(self._pool) as conn:
            return conn.execute(postgres_sql(sql), params).fetchall()

    def size(self, run_id: int, attempt: int, job: str) -> int:
        rows = self._query(f"SELECT size FROM job_logs WHERE {_KEY}", (run_id, attempt, job))
        return rows[0]["size"] if rows else 0

    def sizes(self, run_id: int) -> dict[tuple[int, str], int]:
        """Every job log of the run: {(attempt, job): size}."""
        rows = self._query("SELECT attempt, job, size FROM job_logs WHERE run_id = ?", (run_id,))
        return {(r["attempt"], r["job"]): r["size"] for r in rows}

    def append(self, run_id: int, attempt: int, job: str, offset: int, data: bytes) -> int:
        return self.append_from(run_id, attempt, job, offset, len(data), _reader(data))

    def append_from(
        self,
        run_id: int,
        attempt: int,
        job: str,
        offset: int,
        length: int,
        read: Callable[[int], bytes],
    ) -> int:
        """As LogStore.append_from: store the `length` bytes `read` yields, found at
        `offset`, piece by piece; return the stored size."""
        key = (run_id, attempt, job)
        size = self.size(*key)
        if offset > size:
            raise LogGap(size)
        at = offset
        try:
            for piece in pieces(read, length):
                size = self._write_piece(key, at, piece)
                at += len(piece)
        except ShortBody as short:
            log_short_chunk(run_id, attempt, job, offset, short, self.size(*key))
            raise
        return size

    def _write_piece(self, key: tuple[int, int, str], at: int, piece: bytes) -> int:
        """Store the piece found at `at`, in one transaction; return the stored size."""
        try:
            with self.store.borrow(self._pool) as conn:
                conn.execute("BEGIN")
                try:
                    size = self._locked_append(conn, key, at, piece)
                    conn.execute("COMMIT")
                except BaseException:
                    if not conn.broken and not conn.closed:
                        conn.execute("ROLLBACK")
                    raise
        except Exception as exc:
            if not isinstance(exc, LogGap):
                log.error("cannot store the log of run %d attempt %d job %s: %s", *key, exc)
            raise
        return size

    def _locked_append(self, conn, key: tuple[int, int, str], at: int, piece: bytes) -> int:
        lock = postgres_sql(f"SELECT size, last_start FROM job_logs WHERE {_KEY} FOR UPDATE")
        row = conn.execute(lock, key).fetchone()
        if row is None:
            conn.execute(
                "INSERT INTO job_logs (run_id, attempt, job, size, last_start)"
                " VALUES (%s, %s, %s, 0, 0) ON CONFLICT DO NOTHING",
                key,
            )
            row = conn.execute(lock, key).fetchone()
        size, last_start = row["size"], row["last_start"]
        known = size - at  # the leading bytes of this piece we already have
        if known < 0:
            raise LogGap(size)  # not after the first piece: a log only grows
        if known >= len(piece):
            return size
        new = piece[known:]
        if size > 0 and size - last_start + len(new) <= MERGE_BELOW:
            conn.execute(
                postgres_sql(f"UPDATE log_chunks SET data = data || ? WHERE {_KEY} AND start = ?"),
                (new, *key, last_start),
            )
        else:
            conn.execute(
                "INSERT INTO log_chunks (run_id, attempt, job, start, data)"
                " VALUES (%s, %s, %s, %s, %s)",
                (*key, size, new),
            )
            last_start = size
        conn.execute(
            postgres_sql(f"UPDATE job_logs SET size = ?, last_start = ? WHERE {_KEY}"),
            (size + len(new), last_start, *key),
        )
        return size + len(new)

    def sync(self, run_id: int, attempt: int, job: str) -> None:
        """Nothing to do: see the module's docstring."""

    def iter_bytes(
        self, run_id: int, attempt: int, job: str, offset: int, end: int | None = None
    ) -> Iterator[bytes]:
        """Yield the stored bytes from `offset` up to `end` (default: what is there now),
        a few chunks per query, holding no connection between them."""
        key = (run_id, attempt, job)
        end = self.size(*key) if end is None else end
        position = offset
        first = True
        while position < end:
            # The first query starts at the chunk that holds `position`; later ones at the
            # next chunk's start.
            bound = (
                f"start >= COALESCE((SELECT MAX(start) FROM log_chunks WHERE {_KEY}"
                " AND start <= ?), 0)"
                if first
                else "start >= ?"
            )
            params = (*key, *key, position) if first else (*key, position)
            rows = self._query(
                f"SELECT start, data FROM log_chunks WHERE {_KEY} AND {bound} AND start < ?"
                f" ORDER BY start LIMIT {READ_ROWS}",
                (*params, end),
            )
            if not rows:
                return
            first = False
            for row in rows:
                start, data = row["start"], row["data"]
                chunk = bytes(data[max(position - start, 0) : end - start])
                if chunk:
                    yield chunk
                position = max(position, start + len(data))
                if position >= end:
                    return

    def run_ids(self) -> set[int]:
        """None to sweep: a pruned run's chunks go in the transaction that deletes its rows."""
        return set()

    def discard(self, run_id: int) -> None:
        """Nothing to do: see run_ids."""

    def last_byte(self, run_id: int, attempt: int, job: str) -> bytes:
        rows = self._query(
            "SELECT substring(c.data FROM length(c.data)) AS last FROM job_logs l"
            " JOIN log_chunks c ON c.run_id = l.run_id AND c.attempt = l.attempt"
            " AND c.job = l.job AND c.start = l.last_start"
            " WHERE l.run_id = ? AND l.attempt = ? AND l.job = ?",
            (run_id, attempt, job),
        )
        return bytes(rows[0]["last"]) if rows else b""


def _reader(data: bytes) -> Callable[[int], bytes]:
    view, taken = memoryview(data), 0

    def read(n: int) -> bytes:
        nonlocal taken
        piece = bytes(view[taken : taken + n])
        taken += len(piece)
        return piece

    return read
