"""The writes that move a run between states, inside a caller's transaction: close an
attempt, re-queue, lose, end. Below the scheduler and the services that call them; they
take a connection, never the Primary.
"""

import json

from primary.notifications import outbox
from primary.runs.events import RunEnded
from primary.store.db import Store, after_commit
from primary.store.logs import ClosedAttempt


def end_attempt(conn, run_id: int, outcome: str, now: float, sync_logs: bool = True) -> None:
    """Close the run's current attempt with its outcome (a final state, taken back, lost).
    `sync_logs`: note it (store.after_commit) so its partial logs go to disk; not needed
    when its worker finished it, having reported every job's final status."""
    closed = conn.execute(
        "UPDATE attempts SET ended_at = ?, outcome = ? WHERE run_id = ? AND ended_at IS NULL"
        " AND attempt = (SELECT attempt FROM runs WHERE id = ?) RETURNING attempt",
        (now, outcome, run_id, run_id),
    ).fetchall()
    if closed and sync_logs:
        jobs = conn.execute(
            "SELECT name FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
        ).fetchall()
        after_commit(ClosedAttempt(run_id, closed[0]["attempt"], tuple(j["name"] for j in jobs)))


def keep_attempt_view(conn, run_id: int, reason: str) -> None:
    """Copy what the run log shows of the current attempt (placement, prepare notes, job
    states) into its attempts row: the next assignment replaces them on the run, and the run
    log keeps showing the old attempt as it was (primary.runlog)."""
    run = conn.execute(
        "SELECT attempt, placement, prepare_notes FROM runs WHERE id = ?", (run_id,)
    ).fetchone()
    jobs = [
        {
            "name": j["name"],
            "state": j["state"],
            "exit_code": j["exit_code"],
            "started": j["started_at"] is not None,
        }
        for j in conn.execute(
            "SELECT name, state, exit_code, started_at FROM jobs WHERE run_id = ?"
            " ORDER BY position",
            (run_id,),
        )
    ]
    conn.execute(
        "UPDATE attempts SET reason = ?, placement = ?, prepare_notes = ?, jobs = ?"
        " WHERE run_id = ? AND attempt = ?",
        (reason, run["placement"], run["prepare_notes"], json.dumps(jobs), run_id, run["attempt"]),
    )


def requeue(conn, run_id: int, reason: str, now: float, lost: bool = False) -> None:
    """Put a run back in the queue; the next plan() decides again."""
    keep_attempt_view(conn, run_id, reason)
    end_attempt(conn, run_id, "lost" if lost else "taken back", now)
    conn.execute(
        "UPDATE runs SET state = 'queued', worker_id = NULL, worker_name = NULL,"
        " lease_expires = NULL, queued_at = ?, reason = ?,"
        " lost_count = lost_count + ? WHERE id = ?",
        (now, reason, int(lost), run_id),
    )


def end_run(
    conn, run_id: int, state: str, now: float, reason: str | None = None, by_worker: bool = False
) -> None:
    """Give a run its final state (and its current attempt the same outcome)."""
    end_attempt(conn, run_id, state, now, sync_logs=not by_worker)
    before = conn.execute(
        "SELECT pipeline, state, started_at FROM runs WHERE id = ?", (run_id,)
    ).fetchone()
    conn.execute(
        "UPDATE runs SET state = ?, finished_at = ?, lease_expires = NULL,"
        " reason = COALESCE(?, reason), finished_by_worker = ? WHERE id = ?",
        (state, now, reason, int(by_worker), run_id),
    )
    # started_at stays from an earlier attempt when a re-queued run ends before it starts
    # again: only a run that was running has a duration.
    started = before["started_at"] if before["state"] == "running" else None
    after_commit(RunEnded(before["pipeline"], state, started, now))
    outbox.queue(conn, run_id, "finished", now)


def lose(conn, run, why: str, now: float) -> None:
    """The run's worker is gone: re-queue it while retries_on_lost allows, else it is lost."""
    retries = json.loads(run["spec"]).get("retries_on_lost", 1)
    if run["lost_count"] < retries:
        retry = f"lost: {why}; re-queued (retry {run['lost_count'] + 1} of {retries})"
        requeue(conn, run["id"], retry, now, lost=True)
    else:
        end_run(conn, run["id"], "lost", now, f"lost: {why}")


def slots_used(store: Store) -> dict[str, int]:
    """Runs each worker holds (assigned or running): the slots it has in use."""
    rows = store.query(
        "SELECT worker_id, COUNT(*) AS n FROM runs WHERE state IN ('assigned', 'running')"
        " GROUP BY worker_id"
    )
    return {r["worker_id"]: r["n"] for r in rows}
