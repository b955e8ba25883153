"""The janitor's lease on both engines (a real SQLite file and a real PostgreSQL server):
one holder at a time, taken again by its holder, free once released or expired."""

import types

import pytest
from pgcluster import both_engines

from primary.runs.janitor import LEASE_SECONDS, release_lease, take_lease
from primary.store.postgres import PostgresStore
from primary.store.sqlite import SqliteStore


@pytest.fixture
def primary(engine, store_url, tmp_path):
    store = SqliteStore(tmp_path / "store.db") if engine == "sqlite" else PostgresStore(store_url)
    store.migrate()
    yield types.SimpleNamespace(store=store)  # the lease needs nothing else of a Primary
    store.close()


def holder_of(primary) -> tuple[str, float] | None:
    row = primary.store.query_one("SELECT holder, expires_at FROM janitor_lease")
    return (row["holder"], row["expires_at"]) if row else None


@both_engines
def test_one_holder_at_a_time(primary):
    assert take_lease(primary, "one", 1000.0)
    assert holder_of(primary) == ("one", 1000.0 + LEASE_SECONDS)
    assert not take_lease(primary, "two", 1001.0)  # held: refused, and nothing changed
    assert holder_of(primary) == ("one", 1000.0 + LEASE_SECONDS)
    assert take_lease(primary, "one", 1010.0)  # its holder renews it
    assert holder_of(primary) == ("one", 1010.0 + LEASE_SECONDS)
    release_lease(primary, "two")  # not the holder: no effect
    assert not take_lease(primary, "two", 1011.0)
    release_lease(primary, "one")
    assert take_lease(primary, "two", 1012.0)
    # A holder that stopped renewing (its primary died) loses it once it expired.
    assert take_lease(primary, "three", 1012.0 + LEASE_SECONDS + 1)
    assert holder_of(primary)[0] == "three"
