"""Workers as the admin API shows and changes them: state, list, lock and drain, tags,
root jobs, slots from the host, de-registration."""

import json
import time

from agent.protocol import CODE_TAGS_ADMIN_ONLY, NAME_RE
from primary.context import Primary
from primary.errors import BadRequest, Forbidden, NotFound
from primary.fleet import worker_history
from primary.fleet.registration import MAX_SLOTS, MAX_TAGS
from primary.runs.placement import WORKER_STATES, candidate_from_row, state_word
from primary.runs.runs import RUN_STATES
from primary.runs.scheduler import PLANNER_LOCK, plan
from primary.runs.transitions import lose, requeue, slots_used
from primary.timestamps import iso


def worker_state(primary: Primary, row: dict, now: float) -> str:
    """One word for people, derived exactly as the planner sees the worker."""

    return state_word(candidate_from_row(row, 0, now, primary.config.heartbeat_timeout))


# Who the agent says its jobs run as (agent/identity.py), in words.
JOB_IDENTITY_TEXT = {
    "pipeline-uids": "each pipeline's jobs run as a uid of their own",
    "job-user": "jobs run as the user {user}, shared by every pipeline",
    "shared": "jobs share the agent's identity",
}


def job_identity(row: dict) -> dict | None:
    """The worker's report, as stored (validated when it arrived: long_poll)."""
    return json.loads(row["job_identity"]) if row["job_identity"] else None


def job_identity_text(identity: dict | None) -> str:
    if identity is None:
        return "not reported yet"
    text = JOB_IDENTITY_TEXT[identity["mode"]].format(user=identity.get("user"))
    if identity["mode"] == "pipeline-uids":
        text += " ({}-{})".format(*identity["uids"])
    return text


def describe(primary: Primary, row: dict, used: int, now: float) -> dict:
    identity = job_identity(row)
    return {
        "id": row["id"],
        "name": row["name"],
        "tags": json.loads(row["tags"]),
        "slots": row["slots"],
        "slots_used": used,
        "state": worker_state(primary, row, now),
        "locked": bool(row["locked"]),
        "draining": bool(row["draining"]),
        "load": json.loads(row["load"]) if row["load"] else None,
        "version": row["version"],
        "last_contact": iso(row["last_contact"]),
        "created_at": iso(row["created_at"]),
        "certificate_expires": iso(row["cert_not_after"]),
        "job_identity": identity,
        "job_identity_text": job_identity_text(identity),
        "root_jobs": bool(row["root_jobs"]),
        "conflict": (
            {"at": iso(row["conflict_at"]), "reason": row["conflict_reason"]}
            if row["conflict_at"] is not None
            else None
        ),
    }


def list_workers(primary: Primary) -> list[dict]:
    used = slots_used(primary.store)
    now = time.time()
    rows = primary.store.query("SELECT * FROM workers ORDER BY name")
    return [describe(primary, dict(r), used.get(r["id"], 0), now) for r in rows]


def get_worker(primary: Primary, worker_id: str) -> dict:
    row = _worker_row(primary.store, worker_id, lock=False)
    return describe(primary, dict(row), slots_used(primary.store).get(row["id"], 0), time.time())


def _worker_row(db, worker_id: str, lock: bool = True):
    """A path segment names a worker by id first, else by name without regard to case (no
    name can look like an id, and names are unique without regard to case: one match).
    `db`: a transaction's connection, which locks the row (`lock`), or the store."""
    for_update = " FOR UPDATE" if lock else ""
    row = db.query_one("SELECT * FROM workers WHERE id = ?" + for_update, (worker_id,))
    if row is None:
        row = db.query_one(
            "SELECT * FROM workers WHERE lower(name) = lower(?)" + for_update, (worker_id,)
        )
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    return row


# Admin actions on a worker's flags, by name: (flag, on).
FLAG_ACTIONS = {
    "lock": ("locked", True),
    "unlock": ("locked", False),
    "drain": ("draining", True),
    "flood": ("draining", False),
}


def set_flag(primary: Primary, worker_id: str, flag: str, on: bool, by: str | None = None) -> dict:
    """Lock/unlock or drain/flood. A locked or draining worker takes no new runs and finishes
    those it has; runs planned for it but not yet confirmed are planned again elsewhere.
    `by`: who asked, for the worker's history of states."""

    assert flag in ("locked", "draining")
    with primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)
        row = _worker_row(conn, worker_id)
        conn.execute(f"UPDATE workers SET {flag} = ? WHERE id = ?", (int(on), row["id"]))
        if on:
            planned = conn.execute(
                "SELECT id FROM runs WHERE worker_id = ? AND state = 'assigned'"
                " ORDER BY id FOR UPDATE",
                (row["id"],),
            ).fetchall()
            for run in planned:
                requeue(conn, run["id"], f"re-planned: {row['name']} is {flag}", time.time())
    primary.waiters.wake(row["id"])  # an agent holding a taken-back assignment drops it
    plan(primary)
    worker_history.record(primary, row["id"], by=by)
    return get_worker(primary, row["id"])


def set_tags(primary: Primary, worker_id: str, tags: object) -> dict:
    """Change a worker's tags; the next scheduling decision uses them."""

    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise BadRequest(f"tags: must be a list of at most {MAX_TAGS} names")
    for tag in tags:
        if not (isinstance(tag, str) and NAME_RE.match(tag)):
            # The tag at fault, named: in a list of ten, which one is wrong matters.
            shown = json.dumps(tag)[:80]
            raise BadRequest(f"tags: {shown} is not a name (letters, digits, '.', '_', '-')")
    with primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)  # no plan in flight decides on the old tags after this
        row = _worker_row(conn, worker_id)
        conn.execute(
            "UPDATE workers SET tags = ? WHERE id = ?", (json.dumps(sorted(set(tags))), row["id"])
        )
    plan(primary)
    return get_worker(primary, row["id"])


def set_root_jobs(primary: Primary, worker_id: str, allowed: object) -> dict:
    """Allow or forbid root jobs (pipelines with run_as_root) on a worker; off by default.
    Runs it holds go on as they started; the next decision uses the new setting."""

    if not isinstance(allowed, bool):
        raise BadRequest("allowed: must be true or false")
    with primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)  # as set_flag: no root run is assigned here beside the change
        row = _worker_row(conn, worker_id)
        conn.execute("UPDATE workers SET root_jobs = ? WHERE id = ?", (int(allowed), row["id"]))
        if not allowed:
            planned = conn.execute(
                "SELECT id FROM runs WHERE worker_id = ? AND state = 'assigned'"
                " AND run_as_root = 1 ORDER BY id FOR UPDATE",
                (row["id"],),
            ).fetchall()
            for run in planned:
                reason = f"re-planned: root jobs are no longer allowed on {row['name']}"
                requeue(conn, run["id"], reason, time.time())
    primary.waiters.wake(row["id"])
    plan(primary)
    return get_worker(primary, row["id"])


TAGS_BY_ADMIN = (
    "a worker cannot change its own tags: they decide which pipelines, and so which secrets,"
    " it receives. An admin sets them: PUT /api/v1/workers/ID/tags, `cifleet-primary worker"
    " tags NAME --tags a,b`, the Workers page, or update-worker.yml"
)


def update_from_host(primary: Primary, worker: dict, body: dict) -> dict:
    """`cifleet-agent update-worker` on the host: drain/flood and slots of this worker. Not
    its tags: a worker's certificate never widens what it may receive."""

    if "tags" in body:
        err = Forbidden(TAGS_BY_ADMIN)
        err.code = CODE_TAGS_ADMIN_ONLY
        raise err
    unknown = set(body) - {"draining", "slots"}
    if unknown:
        raise BadRequest(f"{sorted(unknown)[0]}: unknown field; expected draining, slots")
    if "draining" in body and not isinstance(body["draining"], bool):
        raise BadRequest("draining: must be true or false")
    slots = body.get("slots")
    if "slots" in body and (
        not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS
    ):
        raise BadRequest(f"slots: must be a whole number from 1 to {MAX_SLOTS}")
    if "slots" in body:
        with primary.store.transaction() as conn:
            conn.lock(PLANNER_LOCK)  # a plan in flight counts the slots it read
            conn.execute("UPDATE workers SET slots = ? WHERE id = ?", (slots, worker["id"]))
        primary.waiters.wake(worker["id"])  # its held poll answers with the new slots now
    if "draining" in body:
        return set_flag(primary, worker["id"], "draining", body["draining"], by="its agent")
    plan(primary)
    return get_worker(primary, worker["id"])


def delete_worker(primary: Primary, worker_id: str) -> dict:
    """De-register: the record goes, and with it the only certificate serial the agent port
    accepts for it, so every later request with that certificate is refused at once. Its
    runs are re-queued (or end as lost, by retries_on_lost); pipelines whose home it was
    start clean elsewhere."""

    now = time.time()
    with primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)
        row = _worker_row(conn, worker_id)
        take_runs_back(conn, row, f"worker {row['name']} was removed", now)
        worker_history.forget(conn, row["id"])
        conn.execute("DELETE FROM workers WHERE id = ?", (row["id"],))
    primary.waiters.wake(row["id"])  # its held poll answers now; the next one is refused
    plan(primary)
    return {"id": row["id"], "name": row["name"], "deleted": True}


def take_runs_back(conn, row, why: str, now: float) -> None:
    """The worker will run nothing more (removed, or its credentials in conflict): its runs
    are re-queued (or end as lost, by retries_on_lost), and pipelines whose home it was
    start clean elsewhere. The caller holds PLANNER_LOCK and the worker's row."""
    for run in conn.execute(
        "SELECT id, state, spec, lost_count FROM runs WHERE worker_id = ?"
        " AND state IN ('assigned', 'running') ORDER BY id FOR UPDATE",
        (row["id"],),
    ).fetchall():
        if run["state"] == "assigned":
            requeue(conn, run["id"], f"re-planned: {why}", now)
        else:
            lose(conn, run, why, now)
    conn.execute(
        "UPDATE pipelines SET home_worker_id = NULL WHERE home_worker_id = ?", (row["id"],)
    )


def status_counts(primary: Primary) -> dict:
    """Workers by state and runs by state: `GET /api/v1/status` and the Settings page."""
    workers = list_workers(primary)
    by_state = {state: 0 for state in RUN_STATES}
    for row in primary.store.query("SELECT state, COUNT(*) AS n FROM runs GROUP BY state"):
        by_state[row["state"]] = row["n"]
    return {
        "workers": {
            "total": len(workers),
            # Locked, draining and mismatched workers are alive: they count as active here,
            # and by their own state under "by_state".
            "active": sum(1 for w in workers if w["state"] != "inactive"),
            "inactive": sum(1 for w in workers if w["state"] == "inactive"),
            "by_state": {
                state: sum(1 for w in workers if w["state"] == state) for state in WORKER_STATES
            },
        },
        "queue_length": by_state["queued"],
        "runs": by_state,
    }
