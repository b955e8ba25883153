"""Job logs: one append-only file per job and attempt, addressed by byte offset.

The agent sends chunks with the offset they start at. We write only the bytes past what we
have, so a resend never duplicates, and refuse a chunk that starts beyond our end, so a gap
is answered instead of swallowed.
"""

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from primary.errors import storage_error

log = logging.getLogger("cifleet.primary")

READ_CHUNK = 1 << 20


class LogGap(Exception):
    def __init__(self, size: int):
        super().__init__(f"offset is beyond the stored log ({size} bytes)")
        self.size = size


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

    def append(self, run_id: int, attempt: int, job: str, offset: int, data: bytes) -> int:
        """Store `data` found at `offset` of the job's output; return the stored size."""
        path = self.path(run_id, attempt, job)
        with self._locks[hash((run_id, attempt, job)) % len(self._locks)]:
            size = self.size(run_id, attempt, job)
            if offset > size:
                raise LogGap(size)
            fresh = data[size - offset :]
            if not fresh:
                return size
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab") as f:
                    f.write(fresh)
            except OSError as exc:
                # Part of the chunk may be on disk: harmless, the agent resends from the size
                # we acknowledged and the bytes we already have are skipped.
                log.error("cannot store the log %s: %s", path, exc)
                raise storage_error(exc, f"the log of run {run_id} job {job}") from exc
            return size + len(fresh)

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

    def last_byte(self, run_id: int, attempt: int, job: str) -> bytes:
        size = self.size(run_id, attempt, job)
        if size == 0:
            return b""
        with open(self.path(run_id, attempt, job), "rb") as f:
            f.seek(size - 1)
            return f.read(1)
