"""Two primaries of one PostgreSQL fleet in this process (primary.context.connect_signals):
a worker woken through one wakes its poll held by the other, and "runs changed" through one
wakes the log followers of the other (the UI's live logs wait on run_changed). One
primary's own signals reach it once, not again through the database."""

import subprocess
import threading

import pytest
from fleet import BIN, wait_for

from primary.config import PrimaryConfig
from primary.context import connect_signals, open_primary
from primary.runs.runs import notify


@pytest.fixture(scope="module")
def two(tmp_path_factory, pg_cluster):
    pg_url = pg_cluster.create_database()
    root = tmp_path_factory.mktemp("signals")
    first, second = root / "one", root / "two"
    for data_dir, extra in ((first, []), (second, ["--vault-key-file", str(first / "vault.key")])):
        subprocess.run(
            [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), "--store", pg_url]
            + extra,
            check=True,
            capture_output=True,
            timeout=60,
        )
    stop = threading.Event()
    primaries = [open_primary(PrimaryConfig(data_dir=d)) for d in (first, second)]
    for p in primaries:
        p.others_live = True  # as their presence beats would find (primary.fleet.presence)
        connect_signals(p, stop)
        wait_for(p.signals.listening.is_set, 30, "LISTEN")
    yield primaries
    for p in primaries:
        p.signals.close()
    for p in primaries:
        p.store.close()


def test_a_wake_through_one_primary_reaches_a_poll_held_by_the_other(two):
    one, other = two
    held = other.waiters.arm("w-00000000000000aa")
    mine = one.waiters.arm("w-00000000000000aa")  # an older poll of it, held here
    one.waiters.wake("w-00000000000000aa")
    assert mine.is_set()  # at once, here
    assert held.wait(10)
    not_this_one = other.waiters.arm("w-00000000000000bb")
    one.waiters.wake("w-00000000000000aa")
    assert held.wait(10) and not not_this_one.is_set()


def test_runs_changed_through_one_primary_wakes_the_followers_of_the_other(two):
    one, other = two
    woken = threading.Event()
    ready = threading.Event()

    def follow():
        with other.run_changed:
            ready.set()
            if other.run_changed.wait(10):
                woken.set()

    follower = threading.Thread(target=follow)
    follower.start()
    ready.wait(5)
    with other.run_changed:  # the follower waits now (it released the lock in wait())
        pass
    notify(one)
    follower.join(15)
    assert woken.is_set()
