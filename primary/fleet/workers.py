"""Workers as the admin API shows and changes them: state, list, lock and drain, tags,
slots from the host, de-registration."""

import json
import time

from agent.protocol import NAME_RE
from primary.context import Primary
from primary.errors import BadRequest, NotFound
from primary.fleet.registration import MAX_SLOTS, MAX_TAGS
from primary.runs.placement import candidate_from_row, state_word
from primary.runs.runs import RUN_STATES
from primary.runs.scheduler import PLANNER_LOCK, plan
from primary.runs.transitions import lose, requeue, slots_used
from primary.timestamps import iso


def worker_state(primary: Primary, row: dict, now: float) -> str:
    """One word for people, derived exactly as the planner sees the worker."""

    return state_word(candidate_from_row(row, 0, now, primary.config.heartbeat_timeout))


def describe(primary: Primary, row: dict, used: int, now: float) -> dict:
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
    }


def list_workers(primary: Primary) -> list[dict]:
    used = slots_used(primary.store)
    now = time.time()
    rows = primary.store.query("SELECT * FROM workers ORDER BY name")
    return [describe(primary, dict(r), used.get(r["id"], 0), now) for r in rows]


def get_worker(primary: Primary, worker_id: str) -> dict:
    row = primary.store.query_one(
        "SELECT * FROM workers WHERE id = ? OR name = ?", (worker_id, worker_id)
    )
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    return describe(primary, dict(row), slots_used(primary.store).get(row["id"], 0), time.time())


def _worker_row(conn, worker_id: str):
    row = conn.execute(
        "SELECT * FROM workers WHERE id = ? OR name = ? FOR UPDATE", (worker_id, worker_id)
    ).fetchone()
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


def set_flag(primary: Primary, worker_id: str, flag: str, on: bool) -> dict:
    """Lock/unlock or drain/flood. A locked or draining worker takes no new runs and finishes
    those it has; runs planned for it but not yet confirmed are planned again elsewhere."""

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
    return get_worker(primary, row["id"])


def set_tags(primary: Primary, worker_id: str, tags: object) -> dict:
    """Change a worker's tags; the next scheduling decision uses them."""

    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and NAME_RE.match(t) for t in tags)
    ):
        raise BadRequest("tags: must be a list of names (letters, digits, '.', '_', '-')")
    with primary.store.transaction() as conn:
        row = _worker_row(conn, worker_id)
        conn.execute(
            "UPDATE workers SET tags = ? WHERE id = ?", (json.dumps(sorted(set(tags))), row["id"])
        )
    plan(primary)
    return get_worker(primary, row["id"])


def update_from_host(primary: Primary, worker: dict, body: dict) -> dict:
    """`cifleet-agent update-worker` on the host: drain/flood, tags, slots of this worker."""

    unknown = set(body) - {"draining", "tags", "slots"}
    if unknown:
        raise BadRequest(f"{sorted(unknown)[0]}: unknown field; expected draining, tags, slots")
    if "draining" in body and not isinstance(body["draining"], bool):
        raise BadRequest("draining: must be true or false")
    slots = body.get("slots")
    if "slots" in body and (
        not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS
    ):
        raise BadRequest(f"slots: must be a whole number from 1 to {MAX_SLOTS}")
    if "tags" in body:
        set_tags(primary, worker["id"], body["tags"])
    if "slots" in body:
        with primary.store.transaction() as conn:
            conn.execute("UPDATE workers SET slots = ? WHERE id = ?", (slots, worker["id"]))
    if "draining" in body:
        return set_flag(primary, worker["id"], "draining", body["draining"])
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
        for run in conn.execute(
            "SELECT id, state, spec, lost_count FROM runs WHERE worker_id = ?"
            " AND state IN ('assigned', 'running') ORDER BY id FOR UPDATE",
            (row["id"],),
        ).fetchall():
            if run["state"] == "assigned":
                requeue(conn, run["id"], f"re-planned: worker {row['name']} was removed", now)
            else:
                lose(conn, run, f"worker {row['name']} was removed", now)
        conn.execute(
            "UPDATE pipelines SET home_worker_id = NULL WHERE home_worker_id = ?", (row["id"],)
        )
        conn.execute("DELETE FROM workers WHERE id = ?", (row["id"],))
    primary.waiters.wake(row["id"])  # its held poll answers now; the next one is refused
    plan(primary)
    return {"id": row["id"], "name": row["name"], "deleted": True}


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
                state: sum(1 for w in workers if w["state"] == state)
                for state in ("active", "inactive", "locked", "draining", "version mismatch")
            },
        },
        "queue_length": by_state["queued"],
        "runs": by_state,
    }
