"""Job logs in files (SQLite installs): one append-only file per job and attempt, addressed
by byte offset. `pg_logs.py` keeps them in PostgreSQL with the same interface.

The agent sends chunks with the offset they start at. We write only the bytes past what we
have, so a resend never duplicates, and refuse a chunk that starts beyond our end, so a gap
is answered instead of swallowed.
"""

import io
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from primary.errors import storage_error

log = logging.getLogger("cifleet.primary")

READ_CHUNK = 1 << 20
# Pieces a log chunk is received and written in: large enough that per-piece overhead does
# not matter, small enough that no chunk is ever held whole (measured in bench/logs.py).
WRITE_PIECE = 256 << 10


class LogGap(Exception):
    def __init__(self, size: int):
        super().__init__(f"offset is beyond the stored log ({size} bytes)")
        self.size = size


class ShortBody(Exception):
    """The chunk ended before its announced length (the sender went away)."""


def pieces(read: Callable[[int], bytes], length: int) -> Iterator[bytes]:
    while length > 0:
        try:
            piece = read(min(length, WRITE_PIECE))
        except OSError as exc:  # the sender reset the connection or stalled past the timeout
            raise ShortBody(
                f"the chunk ended {length} bytes before its announced length ({exc})"
            ) from exc
        if not piece:
            raise ShortBody(f"the chunk ended {length} bytes before its announced length")
        length -= len(piece)
        yield piece


def log_short_chunk(
    run_id: int, attempt: int, job: str, offset: int, short: ShortBody, size: int
) -> None:
    log.warning(
        "a log chunk of run %d attempt %d job %s (offset %d) came short: %s; the log keeps "
        "what came and has %d bytes",
        run_id,
        attempt,
        job,
        offset,
        short,
        size,
    )


def _open_append(path: Path) -> io.FileIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab", buffering=0)  # noqa: SIM115 - closed by append_from


def _write_all(f: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


@contextmanager
def _storing(path: Path, run_id: int, job: str) -> Iterator[None]:
    """Turn a failure to write the log into the storage error the agent is answered."""
    try:
        yield
    except OSError as exc:
        # Part of the chunk may be on disk: harmless, the agent resends from the size we
        # acknowledged and the bytes we already have are skipped.
        log.error("cannot store the log %s: %s", path, exc)
        raise storage_error(exc, f"the log of run {run_id} job {job}") from exc


def _fsync(node: Path) -> None:
    fd = os.open(node, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LogStore:
    def __init__(self, root: Path):
        self.root = root
        # Striped locks: appends to one job are serialised, different jobs run in parallel.
        self._locks = [threading.Lock() for _ in range(64)]

    def path(self, run_id: int, attempt: int, job: str) -> Path:
        return self.root / str(run_id) / str(attempt) / f"{job}.log"

    def size(self, run_id: int, attempt: int, job: str) -> int:
        try:
            return self.path(run_id, attempt, job).stat().st_size
        except FileNotFoundError:
            return 0

    def sizes(self, run_id: int) -> dict[tuple[int, str], int]:
        """Every job log of the run: {(attempt, job): size}."""
        found = {}
        for path in self.root.glob(f"{run_id}/*/*.log"):
            if path.parent.name.isdigit():
                found[(int(path.parent.name), path.stem)] = path.stat().st_size
        return found

    def append(self, run_id: int, attempt: int, job: str, offset: int, data: bytes) -> int:
        """Store `data` found at `offset` of the job's output; return the stored size."""
        return self.append_from(run_id, attempt, job, offset, len(data), io.BytesIO(data).read)

    def append_from(
        self,
        run_id: int,
        attempt: int,
        job: str,
        offset: int,
        length: int,
        read: Callable[[int], bytes],
    ) -> int:
        """Store the `length` bytes `read` yields, found at `offset` of the job's output,
        piece by piece as they arrive (a request body is never held whole); return the
        stored size.

        LogGap before anything is read when `offset` is beyond our end. ShortBody when
        `read` ends early: the pieces that came are kept, since they are the job's own bytes
        at their offsets and a resend skips them.

        Each piece is read with no lock held and written under the job's lock: a sender
        that stalls holds up nobody else (its resend from another connection included).
        A log only grows, so a piece never starts beyond the end once the first did not.
        """
        path = self.path(run_id, attempt, job)
        lock = self._locks[hash((run_id, attempt, job)) % len(self._locks)]
        with lock:
            size = self.size(run_id, attempt, job)
        if offset > size:
            raise LogGap(size)
        at = offset  # where the next piece starts in the job's output
        f = None
        try:
            for piece in pieces(read, length):
                with lock:
                    size = self.size(run_id, attempt, job)
                    known = size - at  # the leading bytes of this piece we already have
                    if known < len(piece):
                        with _storing(path, run_id, job):
                            if f is None:
                                f = _open_append(path)
                            _write_all(f, piece[known:])
                        size += len(piece) - known
                at += len(piece)
        except ShortBody as short:
            log_short_chunk(run_id, attempt, job, offset, short, self.size(run_id, attempt, job))
            raise
        finally:
            if f is not None:
                f.close()
        return size

    def sync(self, run_id: int, attempt: int, job: str) -> None:
        """Put the job's log on disk, with the directory entries that lead to it (written
        bytes survive a crash of the primary from the moment they are written; this makes
        them survive one of its host too). Once per job, before its final status."""
        path = self.path(run_id, attempt, job)
        if not path.exists():
            return
        with _storing(path, run_id, job):
            for node in (path, path.parent, path.parent.parent, self.root):
                _fsync(node)

    def iter_bytes(
        self, run_id: int, attempt: int, job: str, offset: int, end: int | None = None
    ) -> Iterator[bytes]:
        """Yield the stored bytes from `offset` up to `end` (default: what is there now)."""
        path = self.path(run_id, attempt, job)
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
        except FileNotFoundError:
            return
        with f:
            f.seek(offset)
            remaining = (end if end is not None else os.fstat(f.fileno()).st_size) - offset
            while remaining > 0:
                chunk = f.read(min(READ_CHUNK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

    def run_ids(self) -> set[int]:
        """The runs that have a folder of logs here."""
        if not self.root.is_dir():
            return set()
        return {int(p.name) for p in self.root.iterdir() if p.name.isdigit() and p.is_dir()}

    def discard(self, run_id: int) -> None:
        """Delete every log of a run the retention policy pruned (its rows are gone)."""
        shutil.rmtree(self.root / str(run_id), ignore_errors=True)

    def last_byte(self, run_id: int, attempt: int, job: str) -> bytes:
        size = self.size(run_id, attempt, job)
        if size == 0:
            return b""
        with open(self.path(run_id, attempt, job), "rb") as f:
            f.seek(size - 1)
            return f.read(1)


@dataclass(frozen=True)
class ClosedAttempt:
    """An attempt closed without its worker (lost, taken back, ended for it): no final job
    status put its logs on disk, so they are synced once the closing commits."""

    run_id: int
    attempt: int
    jobs: tuple[str, ...]
