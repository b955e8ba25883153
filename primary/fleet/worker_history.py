"""A worker's history of states, as the planner sees them (placement.state_word: active,
inactive, locked, draining, credentials in conflict, version mismatch): when each began,
and who made it so when an admin did. The worker row keeps the last state recorded; a
change is written by whoever notices it first, with a conditional update, so several
primaries write it once. Admin actions record at once (with their caller); the lease
sweeper records what time and agents change (a worker that stopped answering, came back,
or drained itself)."""

import time

from primary.context import Primary
from primary.runs.placement import candidate_from_row, state_word
from primary.timestamps import iso

KEPT_PER_WORKER = 200  # older changes are dropped as new ones come
# Every this many seconds the sweep looks at every worker, not only those time may change.
FULL_PASS_SECONDS = 60.0


def record(
    primary: Primary,
    worker_id: str | None = None,
    by: str | None = None,
    why: str | None = None,
    everyone: bool = False,
) -> int:
    """Record the state of `worker_id` (or of each worker time may have changed, or of
    `everyone`) if it is not the one recorded last; `by` and `why` go with the change. The
    number recorded."""
    now = time.time()
    heartbeat = primary.config.heartbeat_timeout
    if worker_id is not None:
        rows = primary.store.query("SELECT * FROM workers WHERE id = ?", (worker_id,))
    elif everyone:
        rows = primary.store.query("SELECT * FROM workers")
    else:
        since = now - heartbeat
        rows = primary.store.query(
            # Those time may have changed: a first contact, past the heartbeat timeout (a
            # conflict outranks it), back from inactive. The rest change by actions
            # (recorded then) or by their agents (the full pass).
            "SELECT * FROM workers WHERE (last_contact IS NOT NULL AND recorded_state IS NULL)"
            " OR (last_contact < ? AND recorded_state NOT IN ('inactive', ?))"
            " OR (last_contact >= ? AND recorded_state = 'inactive')",
            (since, "credentials in conflict", since),
        )
    written = 0
    for row in rows:
        if row["last_contact"] is None and row["recorded_state"] is None:
            continue  # registered, not polled yet: its history begins with its first poll
        state = state_word(candidate_from_row(dict(row), 0, now, heartbeat))
        if state != row["recorded_state"]:
            written += _write(primary, dict(row), state, now, by, why or _why(row, state, now))
    return written


def record_all(primary: Primary) -> int:
    """Every worker's state, for what the cheaper pass cannot see (an agent that drained)."""
    return record(primary, everyone=True)


def _why(row, state: str, now: float) -> str | None:
    if state == "inactive" and row["last_contact"] is not None:
        return f"no contact for {now - row['last_contact']:.0f} s"
    if state == "credentials in conflict":
        return row["conflict_reason"]
    return None


def _write(primary: Primary, row: dict, state: str, now: float, by, why) -> int:
    with primary.store.transaction() as conn:
        changed = conn.execute(
            "UPDATE workers SET recorded_state = ?"
            " WHERE id = ? AND COALESCE(recorded_state, '') = ? RETURNING id",
            (state, row["id"], row["recorded_state"] or ""),
        ).fetchone()
        if changed is None:
            return 0  # another primary (or a newer change) got there first
        conn.execute(
            "INSERT INTO worker_events (worker_id, at, state, by_whom, why) VALUES (?, ?, ?, ?, ?)",
            (row["id"], now, state, by, why),
        )
        conn.execute(
            "DELETE FROM worker_events WHERE worker_id = ? AND id <= (SELECT id FROM"
            " worker_events WHERE worker_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (row["id"], row["id"], KEPT_PER_WORKER),
        )
    return 1


def history(primary: Primary, worker_id: str, limit: int = 50) -> list[dict]:
    """The worker's state changes, newest first."""
    rows = primary.store.query(
        "SELECT at, state, by_whom, why FROM worker_events WHERE worker_id = ?"
        " ORDER BY id DESC LIMIT ?",
        (worker_id, limit),
    )
    return [
        {"at": iso(r["at"]), "state": r["state"], "by": r["by_whom"], "why": r["why"]} for r in rows
    ]


def forget(conn, worker_id: str) -> None:
    """In the de-registration's transaction: the worker's history goes with it."""
    conn.execute("DELETE FROM worker_events WHERE worker_id = ?", (worker_id,))
