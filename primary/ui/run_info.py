"""Read helpers for the Pipelines and Runs pages: what only the UI shows, on top of the
services (primary/runs/runs.py, primary/pipelines/pipelines.py, primary/fleet/workers.py)."""

from primary.context import Primary
from primary.fleet import workers
from primary.runs.runlog import prepare_lines as attempt_prepare_lines
from primary.runs.runlog import run_log
from primary.runs.runs import FINAL_STATES


def run_state(primary: Primary, run_id: int) -> dict:
    """What the run page shows live: state, reason, attempt, worker and each job's state.
    Small and cheap: a log stream compares it after every read and sends it when changed."""
    row = primary.store.query_one(
        "SELECT state, reason, attempt, worker_name, cancel_requested FROM runs WHERE id = ?",
        (run_id,),
    )
    if row is None:
        return {}
    jobs = primary.store.query(
        "SELECT name, state FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
    )
    return {
        "state": row["state"],
        "final": row["state"] in FINAL_STATES,
        "reason": row["reason"],
        "attempt": row["attempt"],
        "worker": row["worker_name"],
        "cancel_requested": bool(row["cancel_requested"]),
        "jobs": {j["name"]: j["state"] for j in jobs},
    }


def prepare_lines(primary: Primary, run: dict) -> list[str]:
    """The Prepare environment section of the run's current attempt: where it went and why,
    then what the worker did before the first job (as in the run log)."""
    row = primary.store.query_one("SELECT prepare_notes FROM runs WHERE id = ?", (run["id"],))
    notes = row["prepare_notes"] if row else None
    return attempt_prepare_lines(run["placement"], run["worker_name"], notes)


def worker_names(primary: Primary) -> dict[str, str]:
    """Worker names by id."""
    return {w["id"]: w["name"] for w in workers.list_workers(primary)}


def last_runs(primary: Primary) -> dict[str, dict]:
    """Each pipeline's newest run: {pipeline: {"id", "state"}}."""
    rows = primary.store.query(
        "SELECT pipeline, id, state FROM runs"
        " WHERE id IN (SELECT MAX(id) FROM runs GROUP BY pipeline)"
    )
    return {r["pipeline"]: {"id": r["id"], "state": r["state"]} for r in rows}


def tail_start(primary: Primary, run: dict, keep: int) -> int:
    """Where the run page opens the run log: at 0, or for a long log at the start of a
    line about `keep` bytes before its end (a browser is no place for gigabytes; the raw
    log has everything)."""
    output = sum(sum(a["log_sizes"].values()) for a in run["attempts"])
    if output <= keep:
        return 0
    near = output - keep  # the log is longer than the output: this is at least `keep` back
    chunks, _ = run_log(primary, run["id"], near)
    seen = 0
    try:
        for chunk in chunks:
            newline = chunk.find(b"\n")
            if newline >= 0:
                return near + seen + newline + 1
            seen += len(chunk)
            if seen > keep:
                break
    finally:
        chunks.close()
    return near


def run_count(primary: Primary, pipeline: str) -> int:
    row = primary.store.query_one("SELECT COUNT(*) AS n FROM runs WHERE pipeline = ?", (pipeline,))
    return row["n"]
