"""The retention policy: which finished runs are kept, and how long a sticky home keeps a
workspace that is not used. The janitor (janitor.py) deletes what falls outside it.

The fleet's default is set by an admin (`PUT /api/v1/retention`, `cifleet-primary
retention set`) and kept in the store (`fleet_settings`), so every primary of a shared store
applies the same one. A pipeline's `keep:` (primary/pipelines/keep_spec.py) replaces the
default's days and runs for its runs. Whatever the policy says, a run that has not finished
(queued, assigned, running) is never pruned, nor the newest run of each pipeline.

With no policy set, everything is kept (what cifleet did before the policy existed).
"""

import json
import time
from dataclasses import dataclass
from typing import Any

from primary.context import Primary
from primary.errors import BadRequest
from primary.pipelines.keep_spec import MAX_DAYS, validate_keep
from primary.runs.runs import FINAL_STATES

SETTING = "retention"
POLICY_KEYS = ("days", "runs", "workspace_days")
DAY = 86_400.0
_FINAL = ", ".join(f"'{state}'" for state in FINAL_STATES)
# A pipeline (row `pipelines`) whose home ran none of its runs since the horizon (the
# parameter) and runs none now.
UNUSED_HOME = (
    "NOT EXISTS (SELECT 1 FROM runs r WHERE r.pipeline = pipelines.name"
    f" AND r.worker_id = pipelines.home_worker_id AND (r.state NOT IN ({_FINAL})"
    " OR COALESCE(r.finished_at, r.created_at) >= ?))"
)


@dataclass(frozen=True)
class Keep:
    """How many of one pipeline's finished runs are kept: those that finished within
    `days`, and the newest `runs`; None is no limit of that kind."""

    days: int | None = None
    runs: int | None = None

    def keeps_everything(self) -> bool:
        return self.days is None and self.runs is None


def fleet_policy(primary: Primary) -> dict[str, int]:
    """The fleet's default: {"days", "runs", "workspace_days"}, each present only if set."""
    row = primary.store.query_one("SELECT value FROM fleet_settings WHERE name = ?", (SETTING,))
    return json.loads(row["value"]) if row else {}


def validate_policy(body: Any) -> dict[str, int]:
    """An admin's policy, normalised; BadRequest names the field that is wrong. A field
    given as null is cleared (no limit)."""

    def fail(field: str, message: str) -> BadRequest:
        return BadRequest(f"{field}: {message}", field=field)

    if not isinstance(body, dict):
        raise fail("(body)", "must be a JSON object with days, runs and/or workspace_days")
    unknown = sorted(set(body) - set(POLICY_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown field; expected one of {', '.join(POLICY_KEYS)}")
    policy: dict[str, int] = validate_keep(
        {k: body[k] for k in ("days", "runs") if k in body}, fail, ""
    )
    days = body.get("workspace_days")
    if days is not None:
        if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= MAX_DAYS:
            raise fail("workspace_days", f"must be a whole number from 1 to {MAX_DAYS}")
        policy["workspace_days"] = days
    return policy


def set_fleet_policy(primary: Primary, body: Any) -> dict[str, int]:
    """Replace the fleet's default with `body` (validated first; nothing is stored when any
    field is wrong)."""
    policy = validate_policy(body)
    with primary.store.transaction() as conn:
        conn.execute(
            "INSERT INTO fleet_settings (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (SETTING, json.dumps(policy, sort_keys=True)),
        )
    return policy


def keep_of(fleet: dict[str, int], spec: dict | None) -> Keep:
    """What applies to one pipeline's runs: its own `keep:` if its definition has one, else
    the fleet's default (also for the runs of a pipeline that no longer exists)."""
    chosen = spec["keep"] if spec is not None and "keep" in spec else fleet
    return Keep(days=chosen.get("days"), runs=chosen.get("runs"))


def pipelines_with_runs(primary: Primary) -> dict[str, Keep]:
    """Every pipeline that has runs, with the policy for them."""
    fleet = fleet_policy(primary)
    specs = {
        r["name"]: json.loads(r["spec"])
        for r in primary.store.query("SELECT name, spec FROM pipelines")
    }
    names = [r["pipeline"] for r in primary.store.query("SELECT DISTINCT pipeline FROM runs")]
    return {name: keep_of(fleet, specs.get(name)) for name in sorted(names)}


def _outside(primary: Primary, pipeline: str, keep: Keep, now: float) -> tuple[str, list]:
    """The WHERE clause (and its parameters) of the pipeline's runs outside `keep`."""
    newest = primary.store.query_one(
        "SELECT MAX(id) AS id FROM runs WHERE pipeline = ?", (pipeline,)
    )
    limits, params = [], []
    if keep.runs is not None:
        # The oldest of the newest `runs` runs (every state counts, as in Jenkins).
        cutoff = primary.store.query(
            "SELECT id FROM runs WHERE pipeline = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (pipeline, keep.runs - 1),
        )
        if cutoff:
            limits.append("id < ?")
            params.append(cutoff[0]["id"])
    if keep.days is not None:
        limits.append("COALESCE(finished_at, created_at) < ?")
        params.append(now - keep.days * DAY)
    if not limits or newest is None or newest["id"] is None:
        return "1 = 0", []
    where = f"pipeline = ? AND state IN ({_FINAL}) AND id < ? AND ({' OR '.join(limits)})"
    return where, [pipeline, newest["id"], *params]


def prunable_runs(primary: Primary, pipeline: str, keep: Keep, now: float, limit: int) -> list[int]:
    """The ids of the oldest `limit` runs of the pipeline that the policy no longer keeps."""
    where, params = _outside(primary, pipeline, keep, now)
    rows = primary.store.query(
        f"SELECT id FROM runs WHERE {where} ORDER BY id LIMIT ?", (*params, limit)
    )
    return [r["id"] for r in rows]


def would_prune(primary: Primary, now: float | None = None) -> list[dict]:
    """What a pass would delete at `now` (default: the clock), by pipeline: [{pipeline,
    keep, runs, first, last}] (`prune --dry-run`). Read only."""
    now = time.time() if now is None else now
    found = []
    for pipeline, keep in pipelines_with_runs(primary).items():
        where, params = _outside(primary, pipeline, keep, now)
        row = primary.store.query_one(
            f"SELECT COUNT(*) AS n, MIN(id) AS first, MAX(id) AS last FROM runs WHERE {where}",
            tuple(params),
        )
        if row and row["n"]:
            found.append(
                {
                    "pipeline": pipeline,
                    "keep": {k: v for k, v in vars(keep).items() if v is not None},
                    "runs": row["n"],
                    "first": row["first"],
                    "last": row["last"],
                }
            )
    return found


def stale_homes(primary: Primary, days: int, now: float) -> list[dict]:
    """Pipelines whose home has run none of their runs within `days` and runs none now:
    [{name, home_worker_id}]. Its workspace there is stale."""
    rows = primary.store.query(
        "SELECT name, home_worker_id FROM pipelines WHERE home_worker_id IS NOT NULL"
        f" AND {UNUSED_HOME} ORDER BY name",
        (now - days * DAY,),
    )
    return [dict(r) for r in rows]


def would_forget_homes(primary: Primary, now: float | None = None) -> list[str]:
    """The pipelines whose unused home a pass would forget now (`workspace_days`)."""
    days = fleet_policy(primary).get("workspace_days")
    if days is None:
        return []
    return [r["name"] for r in stale_homes(primary, days, time.time() if now is None else now)]
