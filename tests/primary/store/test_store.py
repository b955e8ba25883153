"""The store's interface on both engines: a real SQLite file and a real PostgreSQL server
(the session's, tests/conftest.py). What services rely on: rows by name, all-or-nothing
transactions, notes for after the commit, reads inside a transaction, 409 for a refused
constraint, one schema."""

import sqlite3

import psycopg
import pytest
from pgcluster import both_engines

from primary.errors import Conflict, StorageUnavailable
from primary.store.db import after_commit
from primary.store.postgres import PostgresStore, postgres_sql
from primary.store.schema import MIGRATIONS
from primary.store.sqlite import SqliteStore, _sqlite_sql

TOKEN = "INSERT INTO tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)"


@pytest.fixture
def store(engine, store_url, tmp_path):
    opened = SqliteStore(tmp_path / "store.db") if engine == "sqlite" else PostgresStore(store_url)
    opened.migrate()
    yield opened
    opened.close()


@both_engines
def test_rows_read_by_name_by_position_and_as_dicts(store):
    with store.transaction() as conn:
        new_id = conn.execute(TOKEN + " RETURNING id", ("ci", "viewer", "h1", 1.5)).fetchone()["id"]
    row = store.query_one("SELECT id, name, created_at FROM tokens WHERE token_hash = ?", ("h1",))
    assert (row["id"], row["name"], row[1], row["created_at"]) == (new_id, "ci", "ci", 1.5)
    assert dict(row) == {"id": new_id, "name": "ci", "created_at": 1.5}
    assert list(row) == [new_id, "ci", 1.5]
    assert store.query_one("SELECT id FROM tokens WHERE token_hash = ?", ("nope",)) is None


@both_engines
def test_timestamps_keep_their_precision(store):
    """REAL is a double on both: a float4 would round today's times to minutes."""
    now = 1_790_000_000.123456
    with store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", now))
    assert store.query_one("SELECT created_at FROM tokens")["created_at"] == now


@both_engines
def test_a_failed_transaction_keeps_nothing_and_notes_nothing(store):
    notes: list = []
    store.commit_listeners.append(notes.extend)
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", 1.0))
        after_commit("rolled back")
        raise RuntimeError("a service changed its mind")
    assert store.query("SELECT * FROM tokens") == []
    assert notes == []
    with store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", 1.0))
        after_commit("kept")
        # Reads through the store inside the transaction see its writes.
        assert store.query_one("SELECT COUNT(*) AS n FROM tokens")["n"] == 1
    assert notes == ["kept"]


@both_engines
def test_every_transaction_is_told_to_the_observers_with_how_it_ended(store):
    """The metrics' histogram of store transactions (issue 18) times both engines."""
    seen: list[tuple[float, bool]] = []
    store.transaction_observers.append(lambda seconds, committed: seen.append((seconds, committed)))
    with store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", 1.0))
    with pytest.raises(RuntimeError), store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h2", 1.0))
        raise RuntimeError("rolled back")
    with pytest.raises(Conflict), store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", 1.0))  # the hash is taken
    assert [committed for _, committed in seen] == [True, False, False]
    assert all(seconds >= 0 for seconds, _ in seen)


@both_engines
def test_a_change_a_constraint_refuses_is_a_409_and_keeps_nothing(store):
    with store.transaction() as conn:
        conn.execute(TOKEN, ("first", "viewer", "same-hash", 1.0))
    with pytest.raises(Conflict) as refused, store.transaction() as conn:
        conn.execute(TOKEN, ("second", "viewer", "other-hash", 2.0))
        conn.execute(TOKEN, ("third", "viewer", "same-hash", 3.0))
    assert (refused.value.status, refused.value.code) == (409, "conflict")
    assert [r["name"] for r in store.query("SELECT name FROM tokens")] == ["first"]
    with store.transaction() as conn:  # the connection works on
        conn.execute(TOKEN, ("fourth", "viewer", "h4", 4.0))
    assert len(store.query("SELECT name FROM tokens")) == 2


@both_engines
def test_row_locks_in_a_statement_work_on_both(store):
    with store.transaction() as conn:
        conn.execute(TOKEN, ("ci", "viewer", "h1", 1.0))
        conn.lock("planner")
        locked = conn.query(
            "SELECT id FROM tokens WHERE revoked_at IS NULL ORDER BY id FOR UPDATE SKIP LOCKED"
        )
    assert len(locked) == 1


@both_engines
def test_a_second_migrate_changes_nothing(store):
    assert store.schema_version() == len(MIGRATIONS)
    store.migrate()
    assert store.schema_version() == len(MIGRATIONS)


def test_both_engines_make_the_same_tables_and_columns(tmp_path, pg_url):
    sqlite_store = SqliteStore(tmp_path / "store.db")
    sqlite_store.migrate()
    pg_store = PostgresStore(pg_url)
    pg_store.migrate()
    lite = {}
    for (table,) in sqlite_store.connection().execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        for column in sqlite_store.connection().execute(f"PRAGMA table_info({table})"):
            lite[(table, column["name"])] = column["type"]
    pg = {
        (r["table_name"], r["column_name"]): r["data_type"]
        for r in pg_store.query(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name <> 'cifleet_schema'"
        )
    }
    as_pg = {"TEXT": "text", "INTEGER": "bigint", "REAL": "double precision", "BLOB": "bytea"}
    assert {key: as_pg[kind] for key, kind in lite.items()} == pg
    pg_store.close()
    sqlite_store.close()


def test_postgres_is_down_a_read_or_a_write_is_refused_as_unavailable(tmp_path):
    """A server that is not there (its socket gone): 503 at once, not a hang or a 500; the
    store remembers the failure for the lease sweeper's grace."""
    store = PostgresStore(f"postgresql://cifleet@/x?host={tmp_path}")
    with pytest.raises(StorageUnavailable) as refused:
        store.query("SELECT 1")
    assert refused.value.code == "storage_unavailable"
    with pytest.raises(StorageUnavailable), store.transaction() as conn:
        conn.execute("SELECT 1")
    assert store.take_write_failure() is True
    assert store.take_write_failure() is False


def test_a_connection_the_server_closed_is_replaced_before_use(pg_url):
    """The server ended every idle connection (a restart does that): the next call gets a
    fresh one instead of a refusal."""
    store = PostgresStore(pg_url)
    store.migrate()
    assert store.query_one("SELECT 1 AS one")["one"] == 1
    with psycopg.connect(pg_url, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'cifleet-primary' AND datname = current_database()"
        ).fetchall()
    assert ended and all(r[0] for r in ended)
    assert store.query_one("SELECT 2 AS two")["two"] == 2
    assert store.take_write_failure() is False
    store.close()


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
        ("SELECT '?', \"a?\" FROM t WHERE x = ?", "SELECT '?', \"a?\" FROM t WHERE x = %s"),
        ("SELECT 'it''s ?' || ? FROM t", "SELECT 'it''s ?' || %s FROM t"),
        ("SELECT 100 % 7 FROM t WHERE n LIKE '5%'", "SELECT 100 %% 7 FROM t WHERE n LIKE '5%%'"),
    ],
)
def test_placeholders_for_psycopg(sql, expected):
    assert postgres_sql(sql) == expected


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM runs WHERE id = ? FOR UPDATE", "SELECT * FROM runs WHERE id = ?"),
        (
            "SELECT r.id FROM runs r JOIN p ON 1 WHERE x ORDER BY r.id FOR UPDATE OF r SKIP LOCKED",
            "SELECT r.id FROM runs r JOIN p ON 1 WHERE x ORDER BY r.id",
        ),
        ("SELECT id FROM runs\n FOR UPDATE SKIP LOCKED", "SELECT id FROM runs"),
        ("UPDATE runs SET reason = 'for update' WHERE id = ?", None),
    ],
)
def test_row_locks_are_dropped_for_sqlite(sql, expected):
    assert _sqlite_sql(sql) == (sql if expected is None else expected)
    sqlite3.complete_statement(_sqlite_sql(sql) + ";")
