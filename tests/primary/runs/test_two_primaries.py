"""Two primaries on one PostgreSQL database (a fleet's first data dir and one that joined
it, both opened in this process): the lease sweeper and the planner of one leave alone
what the other is acting on. Each test forces the overlap (a transaction of one primary
holds its locks while the other works), then checks what each did."""

import threading
import time

import pytest
from fleet import wait_for

from agent import __version__
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.fleet.initdir import initialise
from primary.pipelines.pipelines import save_pipeline
from primary.runs import leases, runs
from primary.runs.scheduler import PLANNER_LOCK, plan


@pytest.fixture
def two_primaries(tmp_path, pg_url, monkeypatch):
    first, second = tmp_path / "one", tmp_path / "two"
    initialise(first, [], pg_url)
    initialise(second, [], pg_url, vault_key_file=first / "vault.key")
    opened = [
        open_primary(PrimaryConfig(data_dir=d, heartbeat_timeout=60, primary_worker_slots=0))
        for d in (first, second)
    ]
    yield opened
    for primary in opened:
        primary.logs.close()
        primary.store.close()


def add_worker(primary, name: str, slots: int) -> str:
    with primary.store.transaction() as conn:
        conn.execute(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
            " created_at, last_contact) VALUES (?, ?, '[]', ?, ?, '1', ?, ?, ?)",
            (f"w-{name}", name, slots, __version__, time.time() + 3600, time.time(), time.time()),
        )
    return f"w-{name}"


def queue_runs(primary, count: int) -> list[int]:
    save_pipeline(primary, "name: p\njobs:\n  - name: build\n    steps: ['true']\n")
    return [runs.create_run(primary, "p") for _ in range(count)]


class Holding:
    """A transaction of `primary`, on a thread of its own, that runs `inside(conn)` and
    then stays open until release()."""

    def __init__(self, primary, inside):
        self._inside = inside
        self._primary = primary
        self.held = threading.Event()
        self._release = threading.Event()
        self.thread = threading.Thread(target=self._run)
        self.thread.start()
        assert self.held.wait(30), "the holding transaction did not start"

    def _run(self) -> None:
        with self._primary.store.transaction() as conn:
            self._inside(conn)
            self.held.set()
            self._release.wait(30)

    def release(self) -> None:
        self._release.set()
        self.thread.join(30)


def test_one_primary_sweeps_a_lease_the_other_holds_locked_never(two_primaries):
    one, two = two_primaries
    run_ids = queue_runs(one, 2)  # no worker yet: they wait
    worker = add_worker(one, "builder", 2)
    assert plan(one) == 2
    with one.store.transaction() as conn:  # both running, both leases long gone
        conn.execute(
            "UPDATE runs SET state = 'running', lease_expires = ? WHERE worker_id = ?",
            (time.time() - 100, worker),
        )
        conn.execute("UPDATE workers SET slots = 0")  # nothing is planned again after the loss
    first, second = run_ids
    # Primary one is acting on the first run (as its sweeper or a report would).
    holding = Holding(
        one, lambda conn: conn.execute("SELECT id FROM runs WHERE id = ? FOR UPDATE", (first,))
    )
    assert leases.expire_leases(two) == 1  # only the second: the first is locked
    holding.release()
    assert leases.expire_leases(one) == 1  # the first, by the primary that held it
    assert leases.expire_leases(two) == 0
    for run_id in run_ids:
        run = runs.get_run(one, run_id)
        assert run["state"] == "queued", run
        assert [(a["attempt"], a["outcome"]) for a in run["attempts"]] == [(1, "lost")], run


def test_a_planner_waits_for_the_other_primarys_plan_and_sees_what_it_assigned(two_primaries):
    one, two = two_primaries
    first, second = queue_runs(one, 2)
    worker = add_worker(one, "builder", 1)

    def assign_first(conn) -> None:
        conn.lock(PLANNER_LOCK)
        conn.execute(
            "UPDATE runs SET state = 'assigned', worker_id = ?, worker_name = 'builder',"
            " attempt = 1, lease_expires = ? WHERE id = ?",
            (worker, time.time() + 60, first),
        )

    holding = Holding(one, assign_first)
    assigned: list[int] = []
    planner = threading.Thread(target=lambda: assigned.append(plan(two)))
    planner.start()
    wait_for(
        lambda: (
            one.store.query_one(
                "SELECT COUNT(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )["n"]
            == 1
        ),
        30,
        "the second primary's planner to wait for the first's",
    )
    holding.release()
    planner.join(30)
    # The worker's only slot went to the first run: the second stays queued, and says why.
    assert assigned == [0]
    assert runs.get_run(two, second)["state"] == "queued"
    assert [r["id"] for r in runs.list_runs(two, state="assigned")] == [first]
