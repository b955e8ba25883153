"""Pipelines: store validated definitions, read them back."""

import json
import time

from primary.context import Primary
from primary.errors import BadRequest, NotFound
from primary.pipelines.spec import SpecError, parse_pipeline
from primary.timestamps import iso


def save_pipeline(primary: Primary, text: str) -> tuple[dict, bool]:
    """Validate and store (create or replace). Returns (pipeline, created). Nothing invalid
    is stored: validation is complete before the single write."""
    try:
        spec = parse_pipeline(text)
    except SpecError as exc:
        raise BadRequest(str(exc), field=exc.field, line=exc.line) from None
    now = time.time()
    with primary.store.transaction() as conn:
        existed = conn.execute("SELECT 1 FROM pipelines WHERE name = ?", (spec["name"],)).fetchone()
        conn.execute(
            "INSERT INTO pipelines (name, definition, spec, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " definition = excluded.definition, spec = excluded.spec,"
            " updated_at = excluded.updated_at",
            (spec["name"], text, json.dumps(spec), now, now),
        )
    return get_pipeline(primary, spec["name"]), existed is None


def get_spec(primary: Primary, name: str) -> dict:
    row = primary.store.query_one("SELECT spec FROM pipelines WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"no pipeline {name!r}")
    return json.loads(row["spec"])


def clear_cache(primary: Primary, name: str) -> dict:
    """Forget the pipeline's home: its next run goes to the least loaded worker and starts
    from an empty workspace; the old home deletes its copy on its next poll."""
    with primary.store.transaction() as conn:
        home = home_of(conn, name)
        if (
            conn.execute(
                "UPDATE pipelines SET home_worker_id = NULL, cache_cleared = 1 WHERE name = ?",
                (name,),
            ).rowcount
            == 0
        ):
            raise NotFound(f"no pipeline {name!r}")
    wake_old_home(primary, home)
    return get_pipeline(primary, name)


def home_of(conn, name: str) -> str | None:
    """The worker that holds pipeline `name`'s workspace (its home), if any."""
    row = conn.execute("SELECT home_worker_id FROM pipelines WHERE name = ?", (name,)).fetchone()
    return row["home_worker_id"] if row else None


def wake_old_home(primary: Primary, worker_id: str | None) -> None:
    """A pipeline's home was forgotten (cleared, renamed, deleted): its old home's held poll
    answers now, so the worker deletes the workspace now and not a hold (minutes) later."""
    if worker_id is not None:
        primary.waiters.wake(worker_id)


def forget_evicted_homes(primary: Primary, worker_id: str, names: list[str]) -> int:
    """The agent removed these workspaces to keep under its disk cap: the pipelines whose
    home it was have none any more, so their next run is placed as after a cleared cache
    (an empty workspace, wherever it goes). Returns how many homes were forgotten."""
    if not names:
        return 0
    marks = ",".join("?" * len(names))
    with primary.store.transaction() as conn:
        return conn.execute(
            "UPDATE pipelines SET home_worker_id = NULL, cache_cleared = 1"
            f" WHERE home_worker_id = ? AND name IN ({marks})",
            (worker_id, *names),
        ).rowcount


def _describe(row) -> dict:
    spec = json.loads(row["spec"])
    return {
        "name": row["name"],
        "home_worker_id": row["home_worker_id"],
        "cache_cleared": bool(row["cache_cleared"]),
        "tags": spec["tags"],
        "jobs": [j["name"] for j in spec["jobs"]],
        "spec": spec,
        "definition": row["definition"],
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }


def get_pipeline(primary: Primary, name: str) -> dict:
    row = primary.store.query_one("SELECT * FROM pipelines WHERE name = ?", (name,))
    if row is None:
        raise NotFound(f"no pipeline {name!r}")
    return _describe(row)


def list_pipelines(primary: Primary) -> list[dict]:
    return [_describe(r) for r in primary.store.query("SELECT * FROM pipelines ORDER BY name")]
