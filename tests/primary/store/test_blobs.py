"""Blobs in the store (primary/store/blobs.py) on both engines: a range read across chunk
boundaries gives exactly the bytes asked for (a single artifact file is such a range of
its tar)."""

import io

import pytest
from pgcluster import both_engines

from primary.store import blobs
from primary.store.postgres import PostgresStore
from primary.store.sqlite import SqliteStore

pytestmark = both_engines
DATA = bytes(range(256)) * 3 + b"tail"  # 772 bytes: chunks of 100 make 8, the last short


@pytest.fixture
def store(engine, store_url, tmp_path, monkeypatch):
    monkeypatch.setattr(blobs, "CHUNK", 100)
    opened = SqliteStore(tmp_path / "store.db") if engine == "sqlite" else PostgresStore(store_url)
    opened.migrate()
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, 772), (0, 0), (99, 2), (100, 100), (150, 500), (705, 67), (771, 1), (760, 50)],
)
def test_a_range_is_exactly_its_bytes(store, offset, length):
    blob, _, size = blobs.write(store, io.BytesIO(DATA))
    assert size == len(DATA)
    got = b"".join(blobs.read_range(store, blob, offset, length))
    assert got == DATA[offset : offset + length]
    assert b"".join(blobs.read(store, blob)) == DATA
