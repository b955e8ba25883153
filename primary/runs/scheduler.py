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
# counts the previous one changed. Changes that make a worker take no new runs (lock,
# drain, removal) take it too, so no assignment slips past them.
PLANNER_LOCK = "planner"


def load_candidates(primary: Primary, now: float) -> list[Candidate]:
    used = slots_used(primary.store)
    timeout = primary.config.heartbeat_timeout
    return [
        candidate_from_row(w, used.get(w["id"], 0), now, timeout)
        for w in primary.store.query("SELECT * FROM workers")
    ]


def plan(primary: Primary) -> int:
    """Assign every queued run that can start now, oldest first. Returns how many."""
    woken: set[str] = set()
    assigned = 0
    now = time.time()
    if not primary.store.query_one("SELECT 1 FROM runs WHERE state = 'queued' LIMIT 1"):
        return 0  # the common case: do not take the write lock for nothing
    with primary.plan_lock, primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)
        # SKIP LOCKED: a queued run another transaction holds (being cancelled, say) waits
        # for the next plan, which that transaction's end causes.
        queued = conn.execute(
            "SELECT r.id, r.tags, r.reason, r.queued_at, r.pipeline, p.home_worker_id,"
            " p.cache_cleared FROM runs r LEFT JOIN pipelines p ON p.name = r.pipeline"
            " WHERE r.state = 'queued' ORDER BY r.id FOR UPDATE OF r SKIP LOCKED"
        ).fetchall()
        if not queued:
            return 0
        candidates = {c.id: c for c in load_candidates(primary, now)}
        free = sum(max(c.slots - c.used, 0) for c in candidates.values() if not unavailable(c))
        # Homes change within one pass: the second queued run of a new pipeline follows the first.
        homes: dict[str, tuple[str | None, bool]] = {}
        for run in queued:
            if free <= 0 and run["reason"] is not None:
                # Nothing can start, and this run already says why it waits. Skipping it keeps
                # a deep queue from costing a decision per queued run on every event.
                continue
            home_id, cleared = homes.get(
                run["pipeline"], (run["home_worker_id"], bool(run["cache_cleared"]))
            )
            home = Home(
                home_id, cleared, now - (run["queued_at"] or now), primary.config.home_busy_wait
            )
            decision = choose_worker(
                tuple(json.loads(run["tags"])), list(candidates.values()), home
            )
            if decision.worker_id is None:
                if run["reason"] != decision.waiting:
                    conn.execute(
                        "UPDATE runs SET reason = ?, placement = ? WHERE id = ?",
                        (decision.waiting, json.dumps(decision.reasons), run["id"]),
                    )
                continue
            _assign(conn, primary, run["id"], decision, now)
            if decision.new_home:
                conn.execute(
                    "UPDATE pipelines SET home_worker_id = ?, cache_cleared = 0 WHERE name = ?",
                    (decision.worker_id, run["pipeline"]),
                )
                homes[run["pipeline"]] = (decision.worker_id, False)
            chosen = candidates[decision.worker_id]
            candidates[chosen.id] = dataclasses.replace(chosen, used=chosen.used + 1)
            woken.add(chosen.id)
            assigned += 1
            free -= 1
    for worker_id in woken:
        primary.waiters.wake(worker_id)
    return assigned


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
