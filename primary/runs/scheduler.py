"""Planning: apply the placement decision to the queue, oldest run first, in one
transaction, and wake the chosen workers' long polls."""

import dataclasses
import json
import time

from primary.context import Primary
from primary.runs.placement import (
    Candidate,
    Decision,
    Home,
    candidate_from_row,
    choose_worker,
    unavailable,
)
from primary.runs.transitions import slots_used

# One planner at a time across every primary of the store: a decision reads the slot
# counts the previous one changed. Changes to what a worker may take (lock, drain, removal,
# credentials in conflict, tags, root jobs, slots) take it too, so no assignment decided on
# the old value slips past them.
PLANNER_LOCK = "planner"


def load_candidates(primary: Primary, now: float) -> list[Candidate]:
    used = slots_used(primary.store)
    timeout = primary.config.heartbeat_timeout
    return [
        candidate_from_row(w, used.get(w["id"], 0), now, timeout)
        for w in primary.store.query("SELECT * FROM workers")
    ]


# Queued runs are read a page at a time, oldest first: a pass stops reading once no slot is
# left, so a deep queue costs what can start, not a decision per queued run per event.
QUEUE_PAGE = 64
_QUEUED = (
    "SELECT r.id, r.tags, r.reason, r.queued_at, r.pipeline, r.run_as_root,"
    " p.home_worker_id, p.cache_cleared FROM runs r LEFT JOIN pipelines p ON p.name = r.pipeline"
    " WHERE r.state = 'queued' AND r.id > ?"
)


def _free_slots(candidates: dict[str, Candidate]) -> int:
    return sum(max(c.slots - c.used, 0) for c in candidates.values() if not unavailable(c))


def plan(primary: Primary, refresh_reasons: bool = False) -> int:
    """Assign every queued run that can start now, oldest first. Returns how many.

    Runs that cannot start keep the reason they wait (shown to users), written when it
    changes. Once no slot is free, a pass decides only the runs that have no reason yet;
    `refresh_reasons` (the sweeper's pass, once a second) decides every queued run, so
    what a waiting run says follows the fleet without a full pass on every event."""
    now = time.time()
    store = primary.store
    if not store.query_one("SELECT 1 FROM runs WHERE state = 'queued' LIMIT 1"):
        return 0  # the common case: do not take the write lock for nothing
    with primary.plan_lock:
        if (
            not refresh_reasons
            and _free_slots(_candidates(primary, now)) <= 0
            and not store.query_one(
                "SELECT 1 FROM runs WHERE state = 'queued' AND reason IS NULL LIMIT 1"
            )
        ):
            return 0  # nothing can start and every queued run says why it waits
        with store.transaction() as conn:
            conn.lock(PLANNER_LOCK)
            # The time once the planner is ours: a pass that waited for the lock stamps its
            # assignments after the pass before it, so assigned_at follows queue order.
            woken = _plan_queue(conn, primary, time.time(), refresh_reasons)
    for worker_id in woken:
        primary.waiters.wake(worker_id)
    return sum(woken.values())


def _candidates(primary: Primary, now: float) -> dict[str, Candidate]:
    return {c.id: c for c in load_candidates(primary, now)}


def _plan_queue(conn, primary: Primary, now: float, refresh_reasons: bool) -> dict[str, int]:
    """One pass over the queue inside the caller's transaction; returns how many runs each
    worker was given, and 0 for a former home of a pipeline whose home moved (woken too)."""
    candidates = _candidates(primary, now)
    free = _free_slots(candidates)
    given: dict[str, int] = {}
    # Homes change within one pass: the second queued run of a new pipeline follows the first.
    homes: dict[str, tuple[str | None, bool]] = {}
    # Decisions that placed nothing, by what they depend on: the next run with the same
    # tags and home gets the same answer until an assignment changes the candidates.
    unplaced: dict[tuple, Decision] = {}
    last = 0
    while True:
        skip_reasoned = free <= 0 and not refresh_reasons
        # SKIP LOCKED: a queued run another transaction holds (being cancelled, say) waits
        # for the next plan, which that transaction's end causes.
        page = conn.execute(
            _QUEUED
            + (" AND r.reason IS NULL" if skip_reasoned else "")
            + " ORDER BY r.id LIMIT ? FOR UPDATE OF r SKIP LOCKED",
            (last, QUEUE_PAGE),
        ).fetchall()
        if not page:
            return given
        for run in page:
            last = run["id"]
            if free <= 0 and not refresh_reasons and run["reason"] is not None:
                continue  # nothing can start, and this run already says why it waits
            home_id, cleared = homes.get(
                run["pipeline"], (run["home_worker_id"], bool(run["cache_cleared"]))
            )
            home = Home(
                home_id, cleared, now - (run["queued_at"] or now), primary.config.home_busy_wait
            )
            as_root = bool(run["run_as_root"])
            key = (run["tags"], home_id, cleared, home.waited < home.busy_wait, as_root)
            decision = unplaced.get(key) or choose_worker(
                tuple(json.loads(run["tags"])), list(candidates.values()), home, as_root
            )
            if decision.worker_id is None:
                unplaced[key] = decision
                if run["reason"] != decision.waiting:
                    conn.execute(
                        "UPDATE runs SET reason = ?, placement = ? WHERE id = ?",
                        (decision.waiting, json.dumps(decision.reasons), run["id"]),
                    )
                continue
            _assign(conn, primary, run["id"], decision, now)
            if decision.new_home:
                if home_id is not None and home_id != decision.worker_id:
                    given.setdefault(home_id, 0)  # woken: it deletes its copy now, not a hold later
                conn.execute(
                    "UPDATE pipelines SET home_worker_id = ?, cache_cleared = 0 WHERE name = ?",
                    (decision.worker_id, run["pipeline"]),
                )
                homes[run["pipeline"]] = (decision.worker_id, False)
            chosen = candidates[decision.worker_id]
            candidates[chosen.id] = dataclasses.replace(chosen, used=chosen.used + 1)
            unplaced.clear()
            given[chosen.id] = given.get(chosen.id, 0) + 1
            free -= 1


def _assign(conn, primary: Primary, run_id: int, decision: Decision, now: float) -> None:
    placement = [f"chosen: {decision.worker_name} ({decision.rule})", *decision.reasons]
    conn.execute(
        "UPDATE runs SET state = 'assigned', worker_id = ?, worker_name = ?,"
        " attempt = attempt + 1, lease_expires = ?, assigned_at = ?, reason = NULL,"
        " placement = ?, clean_workspace = ?, prepare_notes = NULL WHERE id = ?",
        (
            decision.worker_id,
            decision.worker_name,
            now + primary.config.confirm_timeout,
            now,
            json.dumps(placement),
            int(decision.clean_workspace),
            run_id,
        ),
    )
    conn.execute(
        "INSERT INTO attempts (run_id, attempt, worker_id, worker_name, assigned_at)"
        " SELECT id, attempt, worker_id, worker_name, ? FROM runs WHERE id = ?",
        (now, run_id),
    )
    conn.execute(
        "UPDATE jobs SET state = 'pending', exit_code = NULL, started_at = NULL,"
        " finished_at = NULL WHERE run_id = ?",
        (run_id,),
    )
