"""Contacts noted by idle polls and stored in one transaction by the sweeper, on a real
SQLite store."""

import json

import pytest

from primary.errors import StorageUnavailable
from primary.fleet.contacts import HeldContacts, PendingContacts, can_wait
from primary.store.sqlite import SqliteStore as Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "cifleet.db")
    s.migrate()
    with s.transaction() as conn:
        for name, contact in (("a", 100.0), ("b", 100.0)):
            conn.execute(
                "INSERT INTO workers (id, name, tags, slots, version, cert_serial,"
                " cert_not_after, created_at, last_contact, load)"
                " VALUES (?, ?, '[]', 1, '1', ?, 1e12, 0, ?, '{}')",
                (f"id-{name}", name, name, contact),
            )
    return s


def stored(store) -> dict[str, tuple[float, dict]]:
    rows = store.query("SELECT name, last_contact, load FROM workers ORDER BY name")
    return {r["name"]: (r["last_contact"], json.loads(r["load"])) for r in rows}


def test_noted_contacts_are_stored_in_one_write_the_newest_of_each(store):
    contacts = PendingContacts()
    contacts.note("id-a", 110.0, '{"cpu": 1}')
    contacts.note("id-a", 120.0, '{"cpu": 2}')  # the newest of a worker's is kept
    contacts.note("id-b", 115.0, '{"cpu": 3}')
    contacts.note("id-b", 114.0, '{"cpu": 4}')  # an older poll of b's that ends later
    assert contacts.write(store) == 2
    assert stored(store) == {"a": (120.0, {"cpu": 2}), "b": (115.0, {"cpu": 3})}
    assert len(contacts) == 0 and contacts.write(store) == 0


def test_a_contact_stored_at_once_meanwhile_is_not_put_back_by_an_older_one(store):
    contacts = PendingContacts()
    contacts.note("id-a", 110.0, '{"cpu": 1}')
    with store.transaction() as conn:  # a poll that changed the draining flag, say
        conn.execute("UPDATE workers SET last_contact = 130, load = '{}' WHERE id = 'id-a'")
    contacts.write(store)
    assert stored(store)["a"] == (130.0, {})


def test_contacts_a_failed_write_could_not_store_wait_for_the_next(store, monkeypatch):
    contacts = PendingContacts()
    contacts.note("id-a", 110.0, '{"cpu": 1}')
    contacts.note("id-b", 111.0, '{"cpu": 1}')

    def unavailable():
        contacts.note("id-b", 140.0, '{"cpu": 9}')  # a poll while the write failed: newer
        raise StorageUnavailable("the store cannot be reached")

    with monkeypatch.context() as patch:
        patch.setattr(store, "transaction", unavailable)
        with pytest.raises(StorageUnavailable):
            contacts.write(store)
    assert contacts.write(store) == 2
    assert stored(store) == {"a": (110.0, {"cpu": 1}), "b": (140.0, {"cpu": 9})}


@pytest.mark.parametrize(
    ("last", "now", "waits"),
    [
        (None, 100.0, False),  # never heard of: it turns active now, not a pass later
        (100.0, 130.0, True),  # an idle agent's next poll (hold 30 s of a 60 s timeout)
        (100.0, 144.9, True),
        (100.0, 145.0, False),  # three quarters of the timeout: stored at once
        (100.0, 200.0, False),  # back from inactive
    ],
)
def test_a_contact_waits_for_the_batch_only_while_its_worker_cannot_turn_inactive(last, now, waits):
    assert can_wait(last, now, heartbeat_timeout=60.0) is waits


def test_held_polls_are_noted_as_heard_when_due_in_the_order_they_were_noted():
    held, contacts = HeldContacts(), PendingContacts()
    heard = {"a": lambda now: now, "b": lambda now: now - 3.0, "gone": lambda now: None}
    tokens = {w: held.hold(f"id-{w}", f'{{"w": "{w}"}}', 100.0, heard[w]) for w in heard}
    assert held.refresh(104.0, 5.0, contacts) == 0  # none due yet
    assert held.refresh(105.0, 5.0, contacts) == 3
    # As heard: now, when its host last answered, and not at all (its connection is gone).
    assert contacts._pending == {"id-a": (105.0, '{"w": "a"}'), "id-b": (102.0, '{"w": "b"}')}
    held.end(tokens["a"])
    c = held.hold("id-c", "{}", 107.0, heard["a"])
    assert held.refresh(109.0, 5.0, contacts) == 0  # b and gone were noted at 105
    assert held.refresh(110.0, 5.0, contacts) == 2  # b, gone; c (107) not yet
    assert held.refresh(112.0, 5.0, contacts) == 1 and contacts._pending["id-c"][0] == 112.0
    held.end(c)
    held.end(c)  # twice: no harm
    assert len(held) == 2


def test_a_held_contact_is_stored_by_the_next_write(store):
    held, contacts = HeldContacts(), PendingContacts()
    held.hold("id-a", '{"cpu": 5}', 120.0, lambda now: now - 1.0)
    held.refresh(150.0, 15.0, contacts)
    assert contacts.write(store) == 1
    assert stored(store)["a"] == (149.0, {"cpu": 5})
