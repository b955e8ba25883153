"""Migration 8 on a store that has rows it forbids now: names in the form of a worker id,
and names equal but for case. Every row is kept, every name ends up unique."""

import sqlite3

import pytest

from primary.store.sqlite import MIGRATIONS, Store, _statements


def _store_at_version_7(path):
    conn = sqlite3.connect(path, isolation_level=None)
    for script in MIGRATIONS[:7]:
        for statement in _statements(script):
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 7")
    rows = [
        ("w-00000000000000a1", "builder", 100.0),
        ("w-00000000000000a2", "Builder", 200.0),  # later: renamed
        ("w-00000000000000a3", "BUILDER", 150.0),  # later than the first: renamed
        ("w-00000000000000a4", "w-00000000000000A1", 300.0),  # looks like an id
        ("w-00000000000000a5", "other", 50.0),
        ("w-00000000000000a6", "w-notanid", 60.0),  # "w-" alone is fine
    ]
    for worker_id, name, created in rows:
        conn.execute(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
            " created_at) VALUES (?, ?, '[]', 1, '0.1.0', 'ab', 0, ?)",
            (worker_id, name, created),
        )
    conn.close()


def test_names_that_break_the_new_rules_are_renamed_and_none_is_lost(tmp_path):
    path = tmp_path / "cifleet.db"
    _store_at_version_7(path)
    store = Store(path)
    store.migrate()
    names = {r["id"]: r["name"] for r in store.query("SELECT id, name FROM workers")}
    assert names == {
        "w-00000000000000a1": "builder",
        "w-00000000000000a2": "Builder-w-00000000000000a2",
        "w-00000000000000a3": "BUILDER-w-00000000000000a3",
        "w-00000000000000a4": "renamed-w-00000000000000a4",
        "w-00000000000000a5": "other",
        "w-00000000000000a6": "w-notanid",
    }
    assert store.query_one("PRAGMA user_version")[0] == len(MIGRATIONS)
    # From now on the store itself refuses a name equal but for case.
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as conn:
        conn.execute(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial,"
            " cert_not_after, created_at) VALUES ('w-x', 'OTHER', '[]', 1, 'v', 'ab', 0, 0)"
        )
