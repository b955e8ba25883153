"""Users on a real SQLite store."""

import pytest

from primary.fleet.users import UserError, check_password, create_user, disable_user, list_users
from primary.store.sqlite import SqliteStore as Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cifleet.db")
    s.migrate()
    return s


def test_passwords_check_and_are_stored_only_as_hashes(store, tmp_path):
    create_user(store, "ada", "admin", "correct horse battery")
    create_user(store, "bob", "viewer", "another long password")
    assert check_password(store, "ada", "correct horse battery") == "admin"
    assert check_password(store, "bob", "another long password") == "viewer"
    assert check_password(store, "ada", "correct horse batterY") is None
    assert check_password(store, "nobody", "correct horse battery") is None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cifleet.db*"))
    assert b"correct horse" not in raw
    assert disable_user(store, "bob") and not disable_user(store, "bob")
    assert check_password(store, "bob", "another long password") is None
    assert [(u["name"], u["role"], bool(u["disabled_at"])) for u in list_users(store)] == [
        ("ada", "admin", False),
        ("bob", "viewer", True),
    ]


@pytest.mark.parametrize(
    ("name", "role", "password", "message"),
    [
        ("a b", "admin", "x" * 12, "name:"),
        ("ada", "root", "x" * 12, "role:"),
        ("ada", "admin", "short", "password:"),
    ],
)
def test_bad_users_are_refused(store, name, role, password, message):
    with pytest.raises(UserError, match=message):
        create_user(store, name, role, password)
    assert list_users(store) == []


def test_names_are_unique(store):
    create_user(store, "ada", "admin", "x" * 12)
    with pytest.raises(UserError, match="exists"):
        create_user(store, "ada", "viewer", "y" * 12)
