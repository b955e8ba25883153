"""Migration 9 on a store that has rows it forbids now: names in the form of a worker id,
and names equal but for case. Every row is kept, every name ends up unique; on both
engines, which run the same SQL."""

import pytest
from pgcluster import both_engines

from primary.errors import Conflict
from primary.store import postgres, sqlite
from primary.store.postgres import PostgresStore
from primary.store.schema import MIGRATIONS
from primary.store.sqlite import SqliteStore

WORKER = (
    "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
    " created_at) VALUES (?, ?, '[]', 1, '0.1.0', 'ab', 0, ?)"
)


@pytest.fixture
def store_at_version_8(engine, store_url, tmp_path, monkeypatch):
    """A store migrated up to version 8, holding the rows the tests need."""
    store = SqliteStore(tmp_path / "store.db") if engine == "sqlite" else PostgresStore(store_url)
    with monkeypatch.context() as m:
        for module in (sqlite, postgres):  # each engine reads the list it imported
            m.setattr(module, "MIGRATIONS", MIGRATIONS[:8])
        store.migrate()
    assert store.schema_version() == 8
    rows = [
        ("w-00000000000000a1", "builder", 100.0),
        ("w-00000000000000a2", "Builder", 200.0),  # later: renamed
        ("w-00000000000000a3", "BUILDER", 150.0),  # later than the first: renamed
        ("w-00000000000000a4", "w-00000000000000A1", 300.0),  # looks like an id
        ("w-00000000000000a5", "other", 50.0),
        ("w-00000000000000a6", "w-notanid", 60.0),  # "w-" alone is fine
        ("w-00000000000000a7", "w-00000000000000g1", 70.0),  # g is not a hex digit
        ("w-00000000000000a8", "w-00000000000000a", 80.0),  # 15 digits
        ("w-00000000000000a9", "x-0000000000000001", 90.0),  # not w-
    ]
    with store.transaction() as conn:
        conn.executemany(WORKER, rows)
    yield store
    store.close()


@both_engines
def test_names_that_break_the_new_rules_are_renamed_and_none_is_lost(store_at_version_8):
    store = store_at_version_8
    store.migrate()
    names = {r["id"]: r["name"] for r in store.query("SELECT id, name FROM workers")}
    assert names == {
        "w-00000000000000a1": "builder",
        "w-00000000000000a2": "Builder-w-00000000000000a2",
        "w-00000000000000a3": "BUILDER-w-00000000000000a3",
        "w-00000000000000a4": "renamed-w-00000000000000a4",
        "w-00000000000000a5": "other",
        "w-00000000000000a6": "w-notanid",
        "w-00000000000000a7": "w-00000000000000g1",
        "w-00000000000000a8": "w-00000000000000a",
        "w-00000000000000a9": "x-0000000000000001",
    }
    assert store.schema_version() == len(MIGRATIONS)
    # From now on the store itself refuses a name equal but for case (a 409, nothing kept).
    with pytest.raises(Conflict), store.transaction() as conn:
        conn.execute(WORKER, ("w-x", "OTHER", 0.0))
    assert store.query_one("SELECT 1 FROM workers WHERE id = 'w-x'") is None
