"""plan() against a real store: a queue deeper than one page is placed oldest first, every
waiting run says why it waits, and a pass with no free slot writes nothing."""

import json
import time

import pytest
from fleet import init_primary
from pgcluster import both_engines

from agent import __version__
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.pipelines.pipelines import save_pipeline
from primary.runs import runs, scheduler

pytestmark = both_engines


@pytest.fixture
def primary(tmp_path, store_url):
    data_dir = init_primary(tmp_path, store=store_url).data_dir
    p = open_primary(PrimaryConfig(data_dir=data_dir, primary_worker_slots=0))
    save_pipeline(p, "name: gpu\ntags: [gpu]\njobs:\n  - name: w\n    steps: ['true']\n")
    save_pipeline(p, "name: plain\njobs:\n  - name: w\n    steps: ['true']\n")
    return p


def add_worker(primary, name: str, slots: int, tags=()) -> None:
    with primary.store.transaction() as conn:
        conn.execute(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
            " created_at, last_contact) VALUES (?, ?, ?, ?, ?, '1', ?, ?, ?)",
            (
                f"id-{name}",
                name,
                json.dumps(list(tags)),
                slots,
                __version__,
                time.time() + 1e6,
                time.time(),
                time.time(),
            ),
        )


def states(primary) -> list[tuple[int, str, str | None]]:
    return [
        (r["id"], r["state"], r["worker_name"])
        for r in primary.store.query("SELECT id, state, worker_name FROM runs ORDER BY id")
    ]


def test_a_deep_queue_is_placed_oldest_first_past_the_first_page(primary, monkeypatch):
    monkeypatch.setattr(scheduler, "QUEUE_PAGE", 4)
    # Ten runs nothing can take (no gpu worker) ahead of the runs that can start.
    gpu = [runs.create_run(primary, "gpu") for _ in range(10)]
    plain = [runs.create_run(primary, "plain") for _ in range(5)]
    add_worker(primary, "w1", slots=3)

    assert scheduler.plan(primary) == 3
    assert [s for s in states(primary) if s[0] in plain] == [
        (plain[0], "assigned", "w1"),
        (plain[1], "assigned", "w1"),
        (plain[2], "assigned", "w1"),
        (plain[3], "queued", None),
        (plain[4], "queued", None),
    ]
    # Event-driven passes stop reading once no slot is left, so the runs behind still say
    # what they said before the worker came; the sweeper's pass (once a second) brings
    # every waiting run's reason up to date.
    stale = primary.store.query_one("SELECT reason FROM runs WHERE id = ?", (plain[4],))
    assert stale["reason"] == "waiting: no worker without tags is registered"
    assert scheduler.plan(primary, refresh_reasons=True) == 0
    reasons = {r["id"]: r["reason"] for r in primary.store.query("SELECT id, reason FROM runs")}
    assert {reasons[i] for i in gpu} == {"waiting: no worker has any of the tags ['gpu']"}
    home_busy = "waiting: home worker w1 is busy; moving elsewhere if it is still busy after 5 s"
    assert reasons[plain[3]] == reasons[plain[4]] == home_busy


def test_with_no_free_slot_a_pass_decides_only_new_runs(primary):
    add_worker(primary, "w1", slots=1)
    first = runs.create_run(primary, "plain")  # create_run plans: it takes the one slot
    waiting = runs.create_run(primary, "plain")
    assert states(primary) == [(first, "assigned", "w1"), (waiting, "queued", None)]
    before = primary.store.query_one("SELECT reason FROM runs WHERE id = ?", (waiting,))
    assert before["reason"].startswith("waiting: home worker w1 is busy")

    # Nothing changed: no write transaction at all.
    opened = []
    real = primary.store.transaction
    primary.store.transaction = lambda: opened.append(1) or real()
    assert scheduler.plan(primary) == 0
    assert opened == []
