"""What the API shows of a run's notifications."""

from primary.context import Primary
from primary.timestamps import iso


def for_run(primary: Primary, run_id: int) -> list[dict] | None:
    """The run's notifications, oldest first; None when there is no such run."""
    if primary.store.query_one("SELECT id FROM runs WHERE id = ?", (run_id,)) is None:
        return None
    rows = primary.store.query(
        "SELECT * FROM notifications WHERE run_id = ? ORDER BY id", (run_id,)
    )
    return [
        {
            "id": r["id"],
            "event": f"run.{r['event']}",
            "state": "delivered"
            if r["delivered_at"] is not None
            else "gave up"
            if r["gave_up_at"] is not None
            else "pending",
            "attempts": r["attempts"],
            "created_at": iso(r["created_at"]),
            "delivered_at": iso(r["delivered_at"]),
            "next_attempt_at": None
            if r["delivered_at"] is not None or r["gave_up_at"] is not None
            else iso(r["next_at"]),
            "last_status": r["last_status"],
            "last_error": r["last_error"],
        }
        for r in rows
    ]
