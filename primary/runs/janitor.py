"""The janitor: deletes the runs the retention policy no longer keeps (retention.py), with
their attempts, jobs and logs, and forgets the sticky homes whose workspace went unused.

One pass at a time across the primaries of a store: a pass holds the `janitor_lease` row
(taken when free or expired, renewed after every batch), so two primaries never walk the
same runs. Even without it nothing would be deleted or counted twice: each batch locks its
runs (SKIP LOCKED) and counts what its own DELETE removed.

Batches are short transactions of at most BATCH_RUNS runs, read outside them, so dispatch
(which writes the runs table on every assignment and report) waits for one batch at most,
and paced (a pause as long as the batch's transaction took), so a large prune holds the
write lock at most half of the time (bench/retention.py measures dispatch during one).
What a pass deletes is noted for after the commit (`RunsPruned`, counted by
primary/metrics) and left as a tombstone per run (`pruned_runs`), so its log answers 410
Gone with the date it was pruned.

Job logs in files (SQLite installs) are deleted once their rows' transaction committed; a
folder left by a crash in between is swept by the next pass (its run has a tombstone).
PostgreSQL log chunks are deleted in the rows' transaction.

A run's artifacts go with it, like its logs: their rows and chunks in the transaction,
their files (SQLite) after it. Their bytes are not counted yet.
"""

import logging
import threading
import time
from dataclasses import dataclass, field

from primary.context import Primary
from primary.runs import artifacts, retention
from primary.runs.events import RunsPruned
from primary.runs.runs import FINAL_STATES
from primary.store.db import after_commit
from primary.store.logs import LogStore

log = logging.getLogger("cifleet.primary")

LEASE = "retention"
LEASE_SECONDS = 60.0  # a pass that stops renewing it (its primary died) frees it this late
BATCH_RUNS = 50
MAX_PAUSE = 1.0  # seconds between two batches at most
_FINAL = ", ".join(f"'{state}'" for state in FINAL_STATES)


@dataclass
class PassReport:
    """What one pass deleted (this pass's share only)."""

    runs: int = 0
    attempts: int = 0
    log_bytes: int = 0
    batches: int = 0
    # The longest a batch's transaction took (what dispatch may have waited for).
    longest_batch_seconds: float = 0.0
    complete: bool = True  # false: it stopped early (time budget, stopping), more is left
    homes_forgotten: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "runs": self.runs,
            "attempts": self.attempts,
            "log_bytes": self.log_bytes,
            "batches": self.batches,
            "longest_batch_ms": round(self.longest_batch_seconds * 1000, 1),
            "complete": self.complete,
            "homes_forgotten": self.homes_forgotten,
        }


def take_lease(primary: Primary, holder: str, now: float) -> bool:
    """Hold the janitor's lease for LEASE_SECONDS from `now`, if it is free, expired or
    ours already."""
    with primary.store.transaction() as conn:
        taken = conn.execute(
            "INSERT INTO janitor_lease (name, holder, expires_at) VALUES (?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_at = excluded.expires_at"
            " WHERE janitor_lease.holder = excluded.holder OR janitor_lease.expires_at < ?",
            (LEASE, holder, now + LEASE_SECONDS, now),
        ).rowcount
    return taken == 1


def release_lease(primary: Primary, holder: str) -> None:
    with primary.store.transaction() as conn:
        conn.execute(
            "UPDATE janitor_lease SET expires_at = 0 WHERE name = ? AND holder = ?",
            (LEASE, holder),
        )


def prune(
    primary: Primary,
    holder: str,
    now: float | None = None,
    batch: int = BATCH_RUNS,
    budget: float | None = None,
    stop: threading.Event | None = None,
) -> PassReport | None:
    """One pass of the policy at `now` (default: the clock). None when another pass holds
    the lease. It stops between two batches (`complete` false; the next pass goes on) once
    `budget` seconds have passed (a caller that waits for it) or `stop` is set (the primary
    is stopping)."""
    now = time.time() if now is None else now
    if not take_lease(primary, holder, time.time()):
        return None
    report = PassReport()
    stop = stop or threading.Event()  # never set: the pauses are plain waits
    ends = None if budget is None else time.monotonic() + budget
    try:
        report.complete = _prune_runs(primary, holder, now, batch, ends, stop, report)
        if report.complete:
            _sweep_orphan_logs(primary)
            days = retention.fleet_policy(primary).get("workspace_days")
            if days is not None:
                report.homes_forgotten = forget_stale_homes(primary, days, now)
    finally:
        release_lease(primary, holder)
    if report.runs or report.homes_forgotten:
        log.info(
            "retention: pruned %d run(s), %d attempt(s), %d log bytes in %d batch(es)"
            " (the longest %.1f ms); forgot %d stale home(s)%s",
            report.runs,
            report.attempts,
            report.log_bytes,
            report.batches,
            report.longest_batch_seconds * 1000,
            len(report.homes_forgotten),
            "" if report.complete else "; stopped early, the next pass goes on",
        )
    return report


def _prune_runs(
    primary: Primary,
    holder: str,
    now: float,
    batch: int,
    ends: float | None,
    stop: threading.Event,
    report: PassReport,
) -> bool:
    """Every pipeline's runs outside the policy, batch by batch; whether all were done."""
    for pipeline, keep in retention.pipelines_with_runs(primary).items():
        if keep.keeps_everything():
            continue
        while ids := retention.prunable_runs(primary, pipeline, keep, now, batch):
            if (ends is not None and time.monotonic() > ends) or stop.is_set():
                return False
            deleted, took = _delete_batch(primary, ids, now, report)
            # Paced: as long a pause as the batch's transaction took, so a large prune
            # holds the store's write lock at most half of the time.
            stop.wait(min(took, MAX_PAUSE))
            if not take_lease(primary, holder, time.time()):
                log.warning("retention: lost the janitor's lease mid-pass; stopping")
                return False
            if not deleted:
                break  # every one was locked by another transaction: the next pass
    return True


def _delete_batch(
    primary: Primary, ids: list[int], now: float, report: PassReport
) -> tuple[int, float]:
    """Delete these runs (those still finished and not locked by anyone) in one short
    transaction; return how many were deleted, and the transaction's seconds."""
    files = isinstance(primary.logs, LogStore)
    # Finished runs' logs no longer change: their sizes are read before the write lock.
    file_bytes = {i: sum(primary.logs.sizes(i).values()) for i in ids} if files else {}
    marks = ",".join("?" * len(ids))
    began = time.perf_counter()
    with primary.store.transaction() as conn:
        rows = conn.execute(
            f"SELECT id, pipeline FROM runs WHERE id IN ({marks}) AND state IN ({_FINAL})"
            " ORDER BY id FOR UPDATE SKIP LOCKED",
            tuple(ids),
        ).fetchall()
        if not rows:
            return 0, time.perf_counter() - began
        got = tuple(r["id"] for r in rows)
        marks = ",".join("?" * len(got))
        in_ids = f"run_id IN ({marks})"
        if files:
            log_bytes = sum(file_bytes[i] for i in got)
        else:
            row = conn.execute(
                f"SELECT COALESCE(SUM(size), 0) AS n FROM job_logs WHERE {in_ids}", got
            ).fetchone()
            log_bytes = int(row["n"])
            conn.execute(f"DELETE FROM log_chunks WHERE {in_ids}", got)
            conn.execute(f"DELETE FROM job_logs WHERE {in_ids}", got)
        conn.execute(f"DELETE FROM notifications WHERE {in_ids}", got)  # the outbox's, any state
        artifacts.delete_for_runs(conn, got)  # their rows and chunks; files after the commit
        attempts = conn.execute(f"DELETE FROM attempts WHERE {in_ids}", got).rowcount
        conn.execute(f"DELETE FROM jobs WHERE {in_ids}", got)
        deleted = conn.execute(f"DELETE FROM runs WHERE id IN ({marks})", got).rowcount
        conn.executemany(
            "INSERT INTO pruned_runs (run_id, pipeline, pruned_at) VALUES (?, ?, ?)"
            " ON CONFLICT (run_id) DO NOTHING",
            [(r["id"], r["pipeline"], now) for r in rows],
        )
        after_commit(RunsPruned(runs=deleted, attempts=attempts, log_bytes=log_bytes))
    took = time.perf_counter() - began
    report.longest_batch_seconds = max(report.longest_batch_seconds, took)
    for run_id in got:
        primary.logs.discard(run_id)
    artifacts.remove_files(primary.data.root, got)
    report.runs += deleted
    report.attempts += attempts
    report.log_bytes += log_bytes
    report.batches += 1
    return deleted, took


def _sweep_orphan_logs(primary: Primary) -> None:
    """Log folders of pruned runs that a crash left behind (files only)."""
    on_disk = primary.logs.run_ids()
    if not on_disk:
        return
    pruned = {r["run_id"] for r in primary.store.query("SELECT run_id FROM pruned_runs")}
    for run_id in sorted(on_disk & pruned):
        primary.logs.discard(run_id)


def forget_stale_homes(primary: Primary, days: int, now: float) -> list[str]:
    """Forget the home of each pipeline that has not run there for `days`: its next run
    starts from an empty workspace wherever it is placed (`cache cleared`), and the old home
    deletes its workspace on its next poll (delete_workspaces). Returns their names."""
    forgotten = []
    for stale in retention.stale_homes(primary, days, now):
        with primary.store.transaction() as conn:
            # Checked again in the write: a run placed there since the read keeps the home.
            changed = conn.execute(
                "UPDATE pipelines SET home_worker_id = NULL, cache_cleared = 1"
                f" WHERE name = ? AND home_worker_id = ? AND {retention.UNUSED_HOME}",
                (stale["name"], stale["home_worker_id"], now - days * retention.DAY),
            ).rowcount
        if changed:
            forgotten.append(stale["name"])
            primary.waiters.wake(stale["home_worker_id"])  # it deletes the workspace now
    return forgotten
