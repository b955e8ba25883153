"""Scheduled runs: every primary's schedule thread asks, every few seconds, which slot each
scheduled pipeline's cron expression names last (primary.pipelines.schedule_spec), and
fires it unless some primary did.

- **Once per slot**, with several primaries and across restarts: a fire is a row of
  `schedule_fires`, unique by (pipeline, slot), inserted with ON CONFLICT DO NOTHING in
  the transaction that makes its run. Of two primaries getting there together one inserts
  it; the other inserts nothing and makes no run.
- **Missed slots fire once, not once each:** only the latest slot is ever fired, so a
  fleet that was down through ten slots runs once when it is back. Slots before the
  pipeline's definition was last saved are not fired (saving a pipeline does not run it).
- A pipeline with a git source builds the commit its ref names at the fire (`git
  ls-remote`, asked before the transaction, so no lock is held for it). A fire that
  cannot run (the repository does not answer, a secret is not set) is recorded with the
  reason and no run, and logged: it is not retried every few seconds.

The run's trigger is {"kind": "schedule", "cron", "timezone", "slot"}.
"""

import json
import logging
import time

from primary.context import Primary
from primary.errors import ApiError, StorageUnavailable
from primary.pipelines import secrets as pipeline_secrets
from primary.pipelines.schedule_spec import latest_slot
from primary.pipelines.source_spec import parameter_values
from primary.runs import runs
from primary.runs.scheduler import plan
from primary.sources import git_remote
from primary.timestamps import iso

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 5.0  # how often a primary looks; a slot fires at most this late


def fire_due(primary: Primary, now: float | None = None) -> list[int]:
    """Fire every scheduled pipeline's latest slot that no primary fired yet; the runs made."""
    now = time.time() if now is None else now
    made = []
    rows = primary.store.query("SELECT name, spec, updated_at FROM pipelines")
    for row in rows:
        spec = json.loads(row["spec"])
        schedule = spec.get("schedule")
        if not schedule:
            continue
        try:
            run_id = _fire_latest(primary, spec, schedule, row["updated_at"], now)
        except StorageUnavailable:
            raise  # the store is down: the next pass tries again, for every pipeline
        except Exception:  # one pipeline's schedule must not stop the others'
            log.exception("schedule of %s: cannot fire", spec["name"])
            continue
        if run_id is not None:
            made.append(run_id)
    if made:
        plan(primary)
        runs.notify(primary)
    return made


def _fire_latest(
    primary: Primary, spec: dict, schedule: dict, updated_at: float, now: float
) -> int | None:
    slot = latest_slot(schedule, now)
    if slot < updated_at:
        return None
    if _fired(primary, spec["name"], slot):
        _note_fired(primary, spec["name"], slot)
        return None
    return _fire(primary, spec, slot)


_noted: dict[tuple[int, str], float] = {}  # (primary, pipeline) -> the last slot logged


def _note_fired(primary: Primary, pipeline: str, slot: float) -> None:
    """Say once per slot and process that this slot was fired (here or by another)."""
    if _noted.get((id(primary), pipeline)) != slot:
        _noted[(id(primary), pipeline)] = slot
        log.info("schedule of %s: slot %s is fired already", pipeline, iso(slot))


def _fired(primary: Primary, pipeline: str, slot: float) -> bool:
    return (
        primary.store.query_one(
            "SELECT 1 FROM schedule_fires WHERE pipeline = ? AND slot = ?", (pipeline, slot)
        )
        is not None
    )


def _fire(primary: Primary, spec: dict, slot: float) -> int | None:
    name, schedule = spec["name"], spec["schedule"]
    trigger = {
        "kind": "schedule",
        "cron": schedule["cron"],
        "timezone": schedule["timezone"],
        "slot": iso(slot),
    }
    source, failure = None, None
    try:
        parameters = parameter_values(spec.get("parameters", {}), None)
    except ValueError as e:  # defaults were checked when the pipeline was saved
        parameters, failure = None, str(e)
    settings = spec.get("source")
    if settings and failure is None:
        try:
            unset = pipeline_secrets.missing(primary, spec)
            if unset:
                raise ApiError(f"secrets: {', '.join(unset)} not set")
            values = pipeline_secrets.values_for(primary, spec)
            full, sha = git_remote.resolve(settings, settings["ref"], values)
            source = {"git": settings["git"], "ref": full, "sha": sha}
        except ApiError as e:
            failure = str(e)
    with primary.store.transaction() as conn:
        inserted = conn.execute(
            "INSERT INTO schedule_fires (pipeline, slot, fired_at, outcome) VALUES (?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING pipeline",
            (name, slot, time.time(), failure or "run"),
        ).fetchone()
        if inserted is None:
            return None  # another primary fired it
        if failure is not None:
            log.warning("schedule of %s, slot %s: no run: %s", name, iso(slot), failure)
            return None
        try:
            run_id = runs.create_run(
                primary, name, trigger, source, parameters or None, spec=spec, conn=conn
            )
        except ApiError as e:  # e.g. a secret deleted since: the fire is recorded, no run
            log.warning("schedule of %s, slot %s: no run: %s", name, iso(slot), e)
            conn.execute(
                "UPDATE schedule_fires SET outcome = ? WHERE pipeline = ? AND slot = ?",
                (str(e), name, slot),
            )
            return None
        conn.execute(
            "UPDATE schedule_fires SET run_id = ? WHERE pipeline = ? AND slot = ?",
            (run_id, name, slot),
        )
    log.info("schedule of %s: slot %s fired: run %d", name, iso(slot), run_id)
    return run_id
