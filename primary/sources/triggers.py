"""Runs started by a person or a program: a manual or API trigger (with parameters, and for
a pipeline with a git source the commit its ref names now), and "run again" of a finished
run at the same commit. Pushes are primary/sources/webhooks.py.

What started a run is recorded with it (`triggered_by`), one JSON object whose `kind` says
which: `api` (with the token's name), `ui` (the user), `webhook` (forge, event, delivery
id), `run again` (of which run, and who asked), `schedule` (primary/sources/schedules.py).
"""

import json

from primary.context import Primary
from primary.errors import BadRequest, conflict
from primary.pipelines import pipelines
from primary.pipelines import secrets as pipeline_secrets
from primary.pipelines.source_spec import parameter_values, valid_ref
from primary.runs import runs
from primary.runs.runs import FINAL_STATES
from primary.sources import git_remote

TRIGGER_KEYS = {"env", "ref"}


def trigger(primary: Primary, name: str, body: dict, by: dict) -> int:
    """Queue a run of pipeline `name`; `body`: {env: {PARAMETER: value}, ref: BRANCH} (both
    optional); `by`: who asked. BadRequest naming the field for anything not valid."""
    spec = pipelines.get_spec(primary, name)
    unknown = set(body) - TRIGGER_KEYS
    if unknown:
        raise BadRequest(f"{sorted(unknown)[0]}: unknown field; expected env or ref")
    try:
        parameters = parameter_values(spec.get("parameters", {}), body.get("env"))
    except ValueError as e:
        raise BadRequest(str(e)) from None
    source = None
    settings = spec.get("source")
    if settings:
        ref = body.get("ref", settings["ref"])
        if not isinstance(ref, str) or not valid_ref(ref):
            raise BadRequest("ref: must be a branch name or refs/tags/NAME")
        _secrets_set(primary, spec)
        values = pipeline_secrets.values_for(primary, spec)
        full, sha = git_remote.resolve(settings, ref, values)
        source = {"git": settings["git"], "ref": full, "sha": sha}
    elif "ref" in body:
        raise BadRequest(f"ref: pipeline {name!r} has no git source")
    return runs.create_run(primary, name, by, source, parameters or None)


def run_again(primary: Primary, run_id: int, by: dict) -> int:
    """A new run of a finished one: the same definition, parameters and commit."""
    row = primary.store.query_one(
        "SELECT pipeline, spec, state, source, parameters FROM runs WHERE id = ?", (run_id,)
    )
    if row is None:
        raise runs.missing_run(primary, run_id)  # 410 for a pruned one
    if row["state"] not in FINAL_STATES:
        raise conflict("not_finished", f"run {run_id} has not finished ({row['state']})")
    pipelines.get_spec(primary, row["pipeline"])  # 404 once the pipeline is gone
    source = json.loads(row["source"]) if row["source"] else None
    if source:
        source = {k: source[k] for k in ("git", "ref", "sha")}
    parameters = json.loads(row["parameters"]) if row["parameters"] else None
    return runs.create_run(
        primary,
        row["pipeline"],
        {**{k: v for k, v in by.items() if k != "kind"}, "kind": "run again", "of_run": run_id},
        source,
        parameters,
        # Its name as it is now: the pipeline may have been renamed since.
        spec={**json.loads(row["spec"]), "name": row["pipeline"]},
    )


def _secrets_set(primary: Primary, spec: dict) -> None:
    unset = pipeline_secrets.missing(primary, spec)
    if unset:
        raise BadRequest(
            f"secrets: {', '.join(unset)} not set for pipeline {spec['name']!r} "
            f"(PUT /api/v1/pipelines/{spec['name']}/secrets/NAME)"
        )
