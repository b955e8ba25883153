"""Runs as admins see them: create, read, cancel, count."""

import json
import time

from primary.context import Primary, runs_changed
from primary.errors import BadRequest, Gone, NotFound, conflict
from primary.pipelines import pipelines
from primary.pipelines import secrets as pipeline_secrets
from primary.runs.scheduler import plan
from primary.runs.transitions import end_run
from primary.timestamps import iso

RUN_STATES = (
    "queued",
    "assigned",
    "running",
    "success",
    "failed",
    "cancelled",
    "lost",
    "timed_out",
)
FINAL_STATES = ("success", "failed", "cancelled", "lost", "timed_out")


def trigger_text(trigger: dict | None) -> str:
    """What started a run, in words (the run's `triggered_by` record)."""
    if not trigger:
        return "not recorded (the run is older than the record)"
    kind = trigger.get("kind")
    who = (
        f"user {trigger['user']}"
        if trigger.get("user")
        else f"API token {trigger['token']}"
        if trigger.get("token")
        else ""
    )
    if kind == "webhook":
        by = f" by {trigger['pusher']}" if trigger.get("pusher") else ""
        what = f"{trigger.get('forge')} {trigger.get('event')}"
        return f"a {what} (delivery {trigger.get('delivery')}){by}"
    if kind == "schedule":
        cron, zone, slot = trigger.get("cron"), trigger.get("timezone"), trigger.get("slot")
        return f"the schedule {cron!r} ({zone}), slot {slot}"
    if kind == "run again":
        return f"run again of run {trigger.get('of_run')}" + (f", by {who}" if who else "")
    if kind == "ui":
        return f"{who} in the web UI"
    return f"the API ({who})" if who else "the API"


def notify(primary: Primary) -> None:
    """Wake everyone following runs (log tails, the UI), on every primary."""
    runs_changed(primary)


def create_run(
    primary: Primary,
    pipeline_name: str,
    triggered_by: dict | None = None,
    source: dict | None = None,
    parameters: dict[str, str] | None = None,
    spec: dict | None = None,
    conn=None,
) -> int:
    """Queue a run of the pipeline (of `spec`, a run again's, when given). `source`: the
    ref and exact commit it builds ({ref, sha, ...}, resolved by the caller: primary/sources);
    `parameters`: every declared parameter's value, put into the pipeline's env;
    `triggered_by`: who or what started it. With `conn`, inside the caller's transaction
    (then the caller plans and notifies after its commit)."""
    spec = pipelines.get_spec(primary, pipeline_name) if spec is None else spec
    if spec.get("source") and not source:
        raise BadRequest(f"pipeline {pipeline_name!r} builds a git source: a run needs its commit")
    unset = pipeline_secrets.missing(primary, spec)
    if unset:
        raise BadRequest(
            f"secrets: {', '.join(unset)} not set for pipeline {pipeline_name!r} "
            f"(PUT /api/v1/pipelines/{pipeline_name}/secrets/NAME)"
        )
    if parameters:
        spec = {**spec, "env": {**spec["env"], **parameters}}
    now = time.time()
    row = (
        spec["name"],
        json.dumps(spec),
        json.dumps(spec["tags"]),
        int(spec.get("run_as_root", False)),
        now,
        now,
        json.dumps(source) if source else None,
        json.dumps(triggered_by or {"kind": "api"}),
        json.dumps(parameters) if parameters else None,
    )
    if conn is not None:
        return _insert_run(conn, row, spec)
    with primary.store.transaction() as conn:
        run_id = _insert_run(conn, row, spec)
    plan(primary)
    notify(primary)
    return run_id


def _insert_run(conn, row: tuple, spec: dict) -> int:
    # The lock a delete or rename takes (primary/pipelines/lifecycle.py): no run is made of
    # a pipeline that is going, nor under a name that just went.
    conn.lock(f"pipeline {spec['name']}")
    if conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (spec["name"],)).fetchone() is None:
        raise NotFound(f"no pipeline {spec['name']!r}")
    run_id = conn.execute(
        "INSERT INTO runs (pipeline, spec, tags, run_as_root, state, created_at, queued_at,"
        " source, triggered_by, parameters) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)"
        " RETURNING id",
        row,
    ).fetchone()["id"]
    conn.executemany(
        "INSERT INTO jobs (run_id, name, position, state) VALUES (?, ?, ?, 'pending')",
        [(run_id, job["name"], i) for i, job in enumerate(spec["jobs"])],
    )
    return run_id


def _run_row(primary: Primary, run_id: int) -> dict:
    row = primary.store.query_one("SELECT * FROM runs WHERE id = ?", (run_id,))
    if row is None:
        raise missing_run(primary, run_id)
    return dict(row)


def missing_run(primary: Primary, run_id: int) -> NotFound | Gone:
    """404 for a run that never was; 410 with the date for one the retention policy pruned
    (its tombstone in pruned_runs)."""
    pruned = primary.store.query_one(
        "SELECT pipeline, pruned_at FROM pruned_runs WHERE run_id = ?", (run_id,)
    )
    if pruned is None:
        return NotFound(f"no run {run_id}")
    when = iso(pruned["pruned_at"])
    return Gone(
        f"run {run_id} of pipeline {pruned['pipeline']}: log pruned on {when[:10]} by the"
        " retention policy (its rows and logs are deleted)",
        pipeline=pruned["pipeline"],
        pruned_at=when,
    )


def job_rows(primary: Primary, run_id: int) -> list[dict]:
    return [
        dict(r)
        for r in primary.store.query(
            "SELECT * FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
        )
    ]


def describe_run(primary: Primary, run: dict, jobs: list[dict] | None = None) -> dict:
    jobs = job_rows(primary, run["id"]) if jobs is None else jobs
    sizes = primary.logs.sizes(run["id"])  # one look for every attempt's job logs
    return {
        "id": run["id"],
        "pipeline": run["pipeline"],
        "state": run["state"],
        "reason": run["reason"],
        "worker_id": run["worker_id"],
        "worker_name": run["worker_name"],
        "attempt": run["attempt"],
        "cancel_requested": bool(run["cancel_requested"]),
        "created_at": iso(run["created_at"]),
        "assigned_at": iso(run["assigned_at"]),
        "started_at": iso(run["started_at"]),
        "finished_at": iso(run["finished_at"]),
        "placement": json.loads(run["placement"]) if run["placement"] else [],
        # What it builds (the git source at one commit) and what started it.
        "source": json.loads(run["source"]) if run.get("source") else None,
        "trigger": json.loads(run["triggered_by"]) if run.get("triggered_by") else None,
        "trigger_text": trigger_text(json.loads(run.get("triggered_by") or "null")),
        "parameters": json.loads(run["parameters"]) if run.get("parameters") else {},
        "attempts": [
            {
                "attempt": a["attempt"],
                "worker_name": a["worker_name"],
                "assigned_at": iso(a["assigned_at"]),
                "ended_at": iso(a["ended_at"]),
                "outcome": a["outcome"],
                "reason": a["reason"],
                # What the primary has of each job's output in this attempt.
                "log_sizes": {j["name"]: sizes.get((a["attempt"], j["name"]), 0) for j in jobs},
            }
            for a in primary.store.query(
                "SELECT * FROM attempts WHERE run_id = ? ORDER BY attempt", (run["id"],)
            )
        ],
        "jobs": [
            {
                "name": j["name"],
                "state": j["state"],
                "exit_code": j["exit_code"],
                "started_at": iso(j["started_at"]),
                "finished_at": iso(j["finished_at"]),
                "log_size": sizes.get((run["attempt"], j["name"]), 0),
            }
            for j in jobs
        ],
    }


def get_run(primary: Primary, run_id: int) -> dict:
    return describe_run(primary, _run_row(primary, run_id))


def attempt_log(primary: Primary, run_id: int, attempt: int, job: str) -> dict:
    """Where one job's log of one attempt stands: {"size", "complete", "outcome"}.

    An attempt that ended (lost, taken back, or the run's final state) has a complete log,
    partial or not: the primary refuses every later write from it.
    """
    row = primary.store.query_one(
        "SELECT outcome, ended_at FROM attempts WHERE run_id = ? AND attempt = ?",
        (run_id, attempt),
    )
    if row is None:
        _run_row(primary, run_id)  # 404 for an unknown run first
        raise NotFound(f"run {run_id} has no attempt {attempt}")
    state = primary.store.query_one(
        "SELECT state FROM jobs WHERE run_id = ? AND name = ?", (run_id, job)
    )
    if state is None:
        raise NotFound(f"run {run_id} has no job {job!r}")
    ended = row["ended_at"] is not None
    return {
        "size": primary.logs.size(run_id, attempt, job),
        "complete": ended or state["state"] not in ("pending", "running"),
        "outcome": row["outcome"],
    }


def list_runs(
    primary: Primary,
    pipeline: str | None = None,
    state: str | None = None,
    limit: int = 100,
    worker: str | None = None,
    before: int | None = None,
    created: tuple[float | None, float | None] = (None, None),
) -> list[dict]:
    """Newest first. `worker`: a worker name; the runs that had an attempt on it. `before`:
    only runs with a lower id (the next page). `created`: [from, until) as epoch seconds."""
    sql, params = "SELECT * FROM runs WHERE 1=1", []
    if before is not None:
        sql += " AND id < ?"
        params.append(before)
    if created[0] is not None:
        sql += " AND created_at >= ?"
        params.append(created[0])
    if created[1] is not None:
        sql += " AND created_at < ?"
        params.append(created[1])
    if pipeline:
        sql += " AND pipeline = ?"
        params.append(pipeline)
    if state:
        sql += " AND state = ?"
        params.append(state)
    if worker:
        sql += " AND id IN (SELECT run_id FROM attempts WHERE worker_name = ?)"
        params.append(worker)
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    return [describe_run(primary, dict(r)) for r in primary.store.query(sql, tuple(params))]


def cancel_run(primary: Primary, run_id: int) -> dict:
    now = time.time()
    worker_to_wake = None
    with primary.store.transaction() as conn:
        run = conn.execute("SELECT * FROM runs WHERE id = ? FOR UPDATE", (run_id,)).fetchone()
        if run is None:
            raise missing_run(primary, run_id)
        if run["state"] in FINAL_STATES:
            raise conflict("already_finished", f"run {run_id} already finished ({run['state']})")
        if run["state"] in ("queued", "assigned"):
            # Not started yet: nothing runs, so it ends here; an agent holding the assignment
            # is refused at `start` and told to drop it on its next poll.
            end_run(conn, run_id, "cancelled", now, "cancelled before it started")
            conn.execute(
                "UPDATE jobs SET state = 'skipped' WHERE run_id = ? AND state = 'pending'",
                (run_id,),
            )
        else:
            conn.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
        worker_to_wake = run["worker_id"]
    if worker_to_wake:
        primary.waiters.wake(worker_to_wake)
    plan(primary)
    notify(primary)
    return get_run(primary, run_id)
