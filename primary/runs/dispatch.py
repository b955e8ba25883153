"""The agent side of runs: start, prepare, log, job status, finish (the long poll is in
primary/api/long_poll.py, leases in leases.py).

Every write names the attempt it belongs to. A write from an attempt that is no longer the
run's current one (taken back, lost, cancelled, re-planned) is refused with 409 stale_attempt,
so a worker that comes back late cannot overwrite anything.
"""

import json
import logging
import time
from collections.abc import Callable

from agent.assignment import COMMIT_RE
from agent.protocol import (
    CODE_LOG_GAP,
    CODE_LOG_INCOMPLETE,
    CODE_STALE_ATTEMPT,
    JOB_FINAL_STATES,
    JOB_RUNNING,
)
from primary.context import Primary
from primary.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    NotFound,
    conflict,
)
from primary.notifications import outbox
from primary.runs.events import FirstStepStarted
from primary.runs.runs import notify
from primary.runs.scheduler import plan
from primary.runs.transitions import end_run
from primary.store.db import after_commit
from primary.store.logs import LogGap, ShortBody

log = logging.getLogger("cifleet.primary")

ACTIVE_STATES = ("assigned", "running")


class LogGapError(ApiError):
    status = 416
    code = CODE_LOG_GAP


def _stale(run_id: int, attempt: int) -> ApiError:
    return conflict(CODE_STALE_ATTEMPT, f"run {run_id} attempt {attempt} is no longer current")


def current_run(primary: Primary, worker: dict, run_id: int, attempt: int, conn=None) -> dict:
    """The run, if this worker holds its current attempt and it is still going.

    Otherwise 409 stale_attempt when this worker did hold that attempt once (taken back,
    lost, cancelled: it should drop the run), and 403 when it never did: a worker may read
    and write only the runs assigned to it.

    With `conn` (a transaction) the run's row is locked until it ends: what is decided from
    it holds, whichever primary's sweeper or planner looks at the run meanwhile.
    """
    if conn is not None:
        run = conn.query_one("SELECT * FROM runs WHERE id = ? FOR UPDATE", (run_id,))
    else:
        run = primary.store.query_one("SELECT * FROM runs WHERE id = ?", (run_id,))
    db = conn or primary.store
    if (
        run is not None
        and run["worker_id"] == worker["id"]
        and run["attempt"] == attempt
        and run["state"] in ACTIVE_STATES
    ):
        return dict(run)
    held = db.query_one(
        "SELECT 1 FROM attempts WHERE run_id = ? AND attempt = ? AND worker_id = ?",
        (run_id, attempt, worker["id"]),
    )
    if held:
        raise _stale(run_id, attempt)
    err = Forbidden(f"run {run_id} attempt {attempt} is not assigned to this worker")
    err.code = "not_your_run"
    raise err


def _job(primary: Primary, run_id: int, name: str) -> dict:
    job = primary.store.query_one(
        "SELECT * FROM jobs WHERE run_id = ? AND name = ?", (run_id, name)
    )
    if job is None:
        raise NotFound(f"run {run_id} has no job {name!r}")
    return dict(job)


def prepare_notes(
    primary: Primary, worker: dict, run_id: int, attempt: int, lines, job_started=None, commit=None
) -> dict:
    """Store what the agent did before the first job; with `job_started`, that job's
    `running` status too (one request fewer per run); with `commit`, what the git source
    checked out ({commit, subject, author}), into the run's source record."""
    if job_started is not None and not isinstance(job_started, str):
        raise BadRequest("job_started: must be a job name")
    if commit is not None and (
        not isinstance(commit, dict)
        or not all(isinstance(commit.get(k), str) for k in ("commit", "subject", "author"))
        or not COMMIT_RE.match(commit["commit"])
    ):
        raise BadRequest("commit: must be {commit: a commit id, subject, author}")
    if (
        not isinstance(lines, list)
        or not all(isinstance(x, str) for x in lines)
        or len(lines) > 1000
    ):
        raise BadRequest("lines: must be a list of at most 1000 strings")
    with primary.store.transaction() as conn:  # one commit for both: it is on dispatch's path
        current_run(primary, worker, run_id, attempt, conn)
        if job_started is not None:
            _job(primary, run_id, job_started)  # an unknown job: 404, and no notes stored
            _mark_running(conn, run_id, job_started, time.time())
        run = conn.execute("SELECT source FROM runs WHERE id = ?", (run_id,)).fetchone()
        if commit is not None and run["source"]:
            source = json.loads(run["source"])
            # The agent checked out `sha` (an annotated tag's object peels to its commit);
            # the repository's own subject and author replace what a webhook said.
            source.update(
                commit=commit["commit"],
                subject=commit["subject"][:500],
                author=commit["author"][:500],
            )
            conn.execute("UPDATE runs SET source = ? WHERE id = ?", (json.dumps(source), run_id))
        conn.execute(
            "UPDATE runs SET prepare_notes = ? WHERE id = ?",
            (json.dumps([line[:1000] for line in lines]), run_id),
        )
    notify(primary)
    return {}


def _mark_running(conn, run_id: int, job: str, now: float) -> None:
    """A pending job is running now; a repeat, or a job already final, changes nothing."""
    _note_first_step(conn, run_id, now)
    conn.execute(
        "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?)"
        " WHERE run_id = ? AND name = ? AND state = 'pending'",
        (now, run_id, job),
    )


# -- run and job reports --------------------------------------------------------------------


def start_run(primary: Primary, worker: dict, run_id: int, attempt: int) -> dict:
    now = time.time()
    with primary.store.transaction() as conn:
        run = current_run(primary, worker, run_id, attempt, conn)
        if run["state"] == "assigned":
            conn.execute(
                "UPDATE runs SET state = 'running', started_at = ?, lease_expires = ? WHERE id = ?",
                (now, now + primary.config.heartbeat_timeout, run_id),
            )
            outbox.queue(conn, run_id, "started", now)
    notify(primary)
    return {"state": "running"}


def append_log(
    primary: Primary,
    worker: dict,
    run_id: int,
    job: str,
    attempt: int,
    offset: int,
    length: int,
    read: Callable[[int], bytes],
) -> dict:
    """Store a chunk of `length` bytes at `offset`, read from the request body as it comes."""
    if offset < 0:
        raise BadRequest("offset: must be 0 or more")
    run = current_run(primary, worker, run_id, attempt)
    row = _job(primary, run_id, job)
    if row["state"] in JOB_FINAL_STATES and offset + length > primary.logs.size(
        run_id, attempt, job
    ):
        raise conflict("job_finished", f"job {job!r} already finished; its log is closed")
    try:
        size = primary.logs.append_from(run["id"], attempt, job, offset, length, read)
    except LogGap as gap:
        raise LogGapError(str(gap), size=gap.size) from None
    except ShortBody as short:
        raise BadRequest(str(short)) from None
    notify(primary)
    return {"size": size}


def job_status(primary: Primary, worker: dict, run_id: int, job: str, body: dict) -> dict:
    attempt, state = body.get("attempt"), body.get("state")
    if not isinstance(attempt, int):
        raise BadRequest("attempt: must be a whole number")
    if state != JOB_RUNNING and state not in JOB_FINAL_STATES:
        raise BadRequest(f"state: must be one of running, {', '.join(JOB_FINAL_STATES)}")
    exit_code = body.get("exit_code")
    if exit_code is not None and (not isinstance(exit_code, int) or isinstance(exit_code, bool)):
        raise BadRequest("exit_code: must be a whole number or null")
    current_run(primary, worker, run_id, attempt)
    row = _job(primary, run_id, job)
    if row["state"] in JOB_FINAL_STATES:
        return {"state": row["state"]}  # a repeat of a report we already have
    now = time.time()
    if state != JOB_RUNNING:
        stored = primary.logs.size(run_id, attempt, job)
        if state != "skipped":
            log_size = body.get("log_size")
            if not isinstance(log_size, int) or log_size < 0:
                raise BadRequest("log_size: must be the job log's final size in bytes")
            if log_size > stored:
                raise conflict(CODE_LOG_INCOMPLETE, "the log is not complete yet", size=stored)
            if log_size < stored:
                raise BadRequest(f"log_size {log_size} is less than the {stored} bytes stored")
            # The agent deletes its copy once the run is finished: from here on ours is the
            # only one, so it goes to disk before the job can be final.
            primary.logs.sync(run_id, attempt, job)
    with primary.store.transaction() as conn:
        # Checked again with the run locked: it may have been lost or taken back since.
        current_run(primary, worker, run_id, attempt, conn)
        if state == JOB_RUNNING:
            _mark_running(conn, run_id, job, now)
        else:
            conn.execute(
                "UPDATE jobs SET state = ?, exit_code = ?, finished_at = ?,"
                " started_at = CASE WHEN ? = 'skipped' THEN started_at"
                " ELSE COALESCE(started_at, ?) END"
                " WHERE run_id = ? AND name = ? AND state IN ('pending', 'running')",
                (state, exit_code, now, state, now, run_id, job),
            )
    notify(primary)
    return {"state": state}


def _note_first_step(conn, run_id: int, now: float) -> None:
    """Before a job is marked running: if no job of this attempt has started yet, its
    dispatch ends now (counted once, inside the transaction that records it)."""
    run = conn.execute(
        "SELECT queued_at, created_at, (SELECT COUNT(*) FROM jobs WHERE run_id = runs.id"
        " AND started_at IS NOT NULL) AS started FROM runs WHERE id = ?",
        (run_id,),
    ).fetchone()
    if run is not None and run["started"] == 0:
        after_commit(FirstStepStarted(run["queued_at"] or run["created_at"], now))


def run_outcome(run: dict, jobs: list[dict]) -> str:
    """The run's final state: cancelled if asked to, else that of the first job that did not
    succeed, else success."""
    if run["cancel_requested"]:
        return "cancelled"
    for job in jobs:
        if job["state"] in ("failed", "timed_out", "cancelled"):
            return job["state"]
    return "success"


def _finished_by(run, worker: dict, attempt: int) -> bool:
    """Whether this worker already finished this attempt (a repeated finish)."""
    return (
        run is not None
        and bool(run["finished_by_worker"])
        and run["worker_id"] == worker["id"]
        and run["attempt"] == attempt
    )


def finish_run(primary: Primary, worker: dict, run_id: int, attempt: int, last_job=None) -> dict:
    """End the run once every job has a final state. `last_job` is the last job's final
    status ({"name", "state", "exit_code", "log_size"}), taken first, as the status call
    would (one request fewer per run)."""
    if last_job is not None:
        if not isinstance(last_job, dict) or not isinstance(last_job.get("name"), str):
            raise BadRequest("job: must be an object with the job's name and final status")
        run = primary.store.query_one("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not _finished_by(run, worker, attempt):
            status = {k: v for k, v in last_job.items() if k != "name"}
            job_status(primary, worker, run_id, last_job["name"], {**status, "attempt": attempt})
    now = time.time()
    with primary.store.transaction() as conn:
        run = conn.query_one("SELECT * FROM runs WHERE id = ? FOR UPDATE", (run_id,))
        if _finished_by(run, worker, attempt):
            return {"state": run["state"]}  # a repeat of a finish we already took
        run = current_run(primary, worker, run_id, attempt, conn)
        jobs = [
            dict(j)
            for j in conn.execute(
                "SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
            )
        ]
        unfinished = [j["name"] for j in jobs if j["state"] not in JOB_FINAL_STATES]
        if unfinished:
            raise conflict(
                "jobs_unfinished", f"jobs without a final state: {', '.join(unfinished)}"
            )
        state = run_outcome(dict(run), jobs)
        end_run(conn, run_id, state, now, by_worker=True)
    plan(primary)
    notify(primary)
    return {"state": state}
