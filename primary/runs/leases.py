"""Leases: unconfirmed assignments taken back, silent workers' runs lost, a new agent
process's old runs ended, fenced runs the agent abandoned, and grace after an outage."""

import logging
import time

from primary.context import Primary
from primary.errors import StorageFull, StorageUnavailable
from primary.runs.runs import notify
from primary.runs.scheduler import plan
from primary.runs.transitions import end_run, lose, requeue

log = logging.getLogger("cifleet.primary")


def _end_gone_run(conn, run, gone: str, why: str, now: float) -> None:
    """A running run whose agent is gone: cancelled if a cancel was asked for (nothing is
    left to confirm it), else lost (re-queued while retries_on_lost allows)."""
    if run["cancel_requested"]:
        end_run(
            conn, run["id"], "cancelled", now, f"cancelled; {gone} before it confirmed the cancel"
        )
    else:
        lose(conn, run, why, now)


def expire_leases(primary: Primary, now: float | None = None) -> int:
    """Take back unconfirmed assignments and mark runs whose worker went silent as lost
    (re-queued while retries_on_lost allows). Returns how many runs changed.

    After the store failed a write (disk full, read-only), the contacts and lease renewals
    of that time were lost with it, not the workers: every lease gets a heartbeat timeout
    from the moment the store takes writes again, as after a restart, before any expires.
    """
    if primary.store.take_write_failure():
        try:
            leases = grace_after_restart(primary)
        except (StorageFull, StorageUnavailable):
            return 0  # still failing: logged by the store, which marks it again; next sweep
        if leases:
            log.warning(
                "the store takes writes again; %d lease(s) now run %g s (the heartbeat"
                " timeout) from now, so no run is lost for contacts it could not record",
                leases,
                primary.config.heartbeat_timeout,
            )
        return 0
    now = time.time() if now is None else now
    changed = 0
    workers = set()
    with primary.store.transaction() as conn:
        # SKIP LOCKED: a run another transaction holds (a report being taken, another
        # primary's sweep) is left to it; one whose lease is renewed meanwhile is not seen.
        expired = conn.execute(
            "SELECT * FROM runs WHERE state IN ('assigned', 'running') AND lease_expires < ?"
            " ORDER BY id FOR UPDATE SKIP LOCKED",
            (now,),
        ).fetchall()
        for run in expired:
            changed += 1
            workers.add(run["worker_id"])
            name = run["worker_name"]
            if run["state"] == "assigned":
                reason = f"taken back: {name} did not confirm the assignment in time"
                requeue(conn, run["id"], reason, now)
                continue
            silent = primary.config.heartbeat_timeout
            why = f"{name} stopped answering (no contact for {silent:g} s)"
            _end_gone_run(conn, run, f"{name} stopped answering", why, now)
    for worker_id in sorted(w for w in workers if w):
        primary.waiters.wake(worker_id)  # a held poll listing the run is told to drop it now
    if changed:
        plan(primary)
        notify(primary)
    return changed


def adopt_session(
    primary: Primary, worker: dict, session: str, held: set[tuple[int, int]], now: float
) -> None:
    """A poll from a new agent process on this worker (its session changed). The runs the
    old process was running there ended with it (an agent ends the jobs an earlier process
    of its home left behind before it polls), so they are lost now, not a heartbeat timeout
    later. Assigned runs stay: the new process is handed them in this poll's answer."""
    changed = 0
    with primary.store.transaction() as conn:
        row = conn.execute(
            "SELECT session FROM workers WHERE id = ? FOR UPDATE", (worker["id"],)
        ).fetchone()
        if row is None or row["session"] == session:
            return
        conn.execute("UPDATE workers SET session = ? WHERE id = ?", (session, worker["id"]))
        if row["session"] is None:
            return  # the first session we hear of: nothing to compare with
        name = worker["name"]
        for run in conn.execute(
            "SELECT * FROM runs WHERE worker_id = ? AND state = 'running' ORDER BY id FOR UPDATE",
            (worker["id"],),
        ).fetchall():
            if (run["id"], run["attempt"]) in held:
                continue
            why = f"the agent on {name} restarted; its jobs ended with the old agent process"
            _end_gone_run(conn, run, f"the agent on {name} restarted", why, now)
            changed += 1
    if changed:
        plan(primary)
        notify(primary)


def abandon_runs(
    primary: Primary, worker: dict, abandoned: set[tuple[int, int]], now: float
) -> None:
    """Runs the agent stopped because it could not reach the primary (it fences them: see
    agent/fence.py) are lost now, if their lease has not expired already. It reports them
    once their jobs are dead, so re-queueing them at once runs nothing twice."""
    if not abandoned:
        return
    changed = 0
    name = worker["name"]
    with primary.store.transaction() as conn:
        for run_id, attempt in sorted(abandoned):
            run = conn.execute(
                "SELECT * FROM runs WHERE id = ? AND attempt = ? AND worker_id = ?"
                " AND state = 'running' FOR UPDATE",
                (run_id, attempt, worker["id"]),
            ).fetchone()
            if run is None:
                continue  # already lost (its lease expired), or not this worker's
            why = f"{name} lost contact with the primary and stopped the job"
            _end_gone_run(conn, run, f"{name} lost contact and stopped the job", why, now)
            changed += 1
    if changed:
        plan(primary)
        notify(primary)


def grace_after_restart(primary: Primary) -> int:
    """After the primary could not hear its workers (it was down, or could not store what
    it heard), give agents a full heartbeat timeout to reconnect before their runs' leases
    can expire. Returns how many leases that covers."""
    expires = time.time() + primary.config.heartbeat_timeout
    with primary.store.transaction() as conn:
        # Locked in id order first, as every transaction that locks several runs does, so
        # no two of them wait for each other.
        conn.execute(
            "SELECT id FROM runs WHERE state IN ('assigned', 'running') ORDER BY id FOR UPDATE"
        ).fetchall()
        return conn.execute(
            "UPDATE runs SET lease_expires = CASE WHEN lease_expires > ? THEN lease_expires"
            " ELSE ? END WHERE state IN ('assigned', 'running')",
            (expires, expires),
        ).rowcount
