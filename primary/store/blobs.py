"""Files kept in the store itself (a shared fleet on PostgreSQL, so every primary serves
them): chunks of CHUNK bytes in `file_chunks` under a random blob id. Writing takes one
short transaction per chunk (a slow sender holds no transaction open); whoever then points
a row at the blob does so in a transaction of its own, and drops the chunks on failure."""

import contextlib
import hashlib
import secrets
import sys
from collections.abc import Iterator
from typing import BinaryIO

from primary.errors import ApiError
from primary.store.db import Store

CHUNK = 1 << 20


def write(store: Store, stream: BinaryIO) -> tuple[str, str, int]:
    """Copy `stream` into a new blob: (blob id, sha256 hex, size). Nothing is left behind if
    it fails."""
    blob = secrets.token_hex(8)
    digest, size, seq = hashlib.sha256(), 0, 0
    try:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            with store.transaction() as conn:
                conn.execute(
                    "INSERT INTO file_chunks (blob, seq, data) VALUES (?, ?, ?)",
                    (blob, seq, chunk),
                )
            seq += 1
    except BaseException:
        drop(store, blob)
        raise
    return blob, digest.hexdigest(), size


def drop(store: Store, blob: str) -> None:
    """Best effort: an upload that failed (the store may be what failed) leaves nothing."""
    with contextlib.suppress(ApiError), store.transaction() as conn:
        conn.execute("DELETE FROM file_chunks WHERE blob = ?", (blob,))


def read_range(store: Store, blob: str, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of the blob from `offset` (chunks are CHUNK bytes, but the last)."""
    seq, skip = divmod(offset, CHUNK)
    left = length
    while left > 0:
        rows = store.query(
            "SELECT seq, data FROM file_chunks WHERE blob = ? AND seq >= ? ORDER BY seq LIMIT 8",
            (blob, seq),
        )
        for row in rows:
            data = bytes(row["data"])[skip : skip + left]
            skip = 0
            left -= len(data)
            seq = row["seq"] + 1
            if data:
                yield data
            if left <= 0:
                return
        if len(rows) < 8:
            return


def read(store: Store, blob: str) -> Iterator[bytes]:
    return read_range(store, blob, 0, sys.maxsize)
