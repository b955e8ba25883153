"""Queue a pipeline's notification of a run's state change inside the transaction that
makes the change: it exists exactly when the change committed, whichever primary made it,
and the scheduler never waits for a receiver (the sender posts it later)."""

import json
from dataclasses import dataclass

from primary.store.db import after_commit
from primary.timestamps import iso


@dataclass(frozen=True)
class NotificationQueued:
    """A commit note: wake this primary's sender."""


def queue(conn, run_id: int, event: str, now: float) -> None:
    """If the run's pipeline has `notify:` for `event` ("started", "finished"), queue its
    notification, with the body as the run is now (after this transaction's change)."""
    run = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    notify = json.loads(run["spec"]).get("notify")
    if not notify or event not in notify["events"]:
        return
    jobs = conn.execute(
        "SELECT name, state, exit_code FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
    ).fetchall()
    body = {
        "event": f"run.{event}",
        "run": {
            "id": run["id"],
            "pipeline": run["pipeline"],
            "state": run["state"],
            "attempt": run["attempt"],
            "worker_name": run["worker_name"],
            "reason": run["reason"],
            "created_at": iso(run["created_at"]),
            "started_at": iso(run["started_at"]),
            "finished_at": iso(run["finished_at"]),
            "source": json.loads(run["source"]) if run["source"] else None,
            "trigger": json.loads(run["triggered_by"]) if run["triggered_by"] else None,
        },
        "jobs": [
            {"name": j["name"], "state": j["state"], "exit_code": j["exit_code"]} for j in jobs
        ],
    }
    conn.execute(
        "INSERT INTO notifications (run_id, pipeline, event, url, secret, body, created_at,"
        " next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            run_id,
            run["pipeline"],
            event,
            notify["url"],
            notify.get("secret"),
            json.dumps(body, separators=(",", ":")),
            now,
            now,
        ),
    )
    after_commit(NotificationQueued())
