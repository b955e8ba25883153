"""Admin API (public port, bearer token): parse, call the service, render."""

from flask import Blueprint, Response, jsonify, request

from primary.api import downloads
from primary.api.auth import caller, primary_of_app, require_role
from primary.api.parse import json_body, whole_number
from primary.errors import BadRequest, NotFound, conflict
from primary.fleet import presence, registration, worker_history, workers
from primary.notifications import service as notifications
from primary.pipelines import lifecycle, pipelines, static_files
from primary.pipelines import secrets as pipeline_secrets
from primary.runs import artifacts, janitor, retention, runs
from primary.runs.runlog import run_log
from primary.runs.runs import RUN_STATES
from primary.sources import triggers

bp = Blueprint("admin", __name__, url_prefix="/api/v1")
VIEW = ("viewer",)
MAX_PIPELINE_BYTES = 1 << 20
# Seconds one prune request may delete for (it holds a public thread); `complete: false`
# says more is left for the next request or the janitor's next pass.
PRUNE_BUDGET = 20.0


def _offset() -> int:
    return whole_number(request.args.get("offset", "0"), "offset")


@bp.get("/worker-secret")
@require_role()
def worker_secret():
    return jsonify({"secret": primary_of_app().vault.get("worker_secret")})


@bp.post("/worker-secret/rotate")
@require_role()
def rotate_worker_secret():
    return jsonify({"secret": registration.rotate_secret(primary_of_app())})


@bp.get("/workers")
@require_role(*VIEW)
def list_workers():
    return jsonify({"workers": workers.list_workers(primary_of_app())})


@bp.get("/workers/<worker_id>")
@require_role(*VIEW)
def get_worker(worker_id: str):
    return jsonify(workers.get_worker(primary_of_app(), worker_id))


def _definition() -> str:
    raw = request.get_data(cache=False)
    if len(raw) > MAX_PIPELINE_BYTES:
        raise BadRequest(f"the definition is larger than {MAX_PIPELINE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"yaml: the definition is not valid UTF-8 (byte {exc.start})") from None


@bp.post("/pipelines")
@require_role()
def save_pipeline():
    pipeline, created = pipelines.save_pipeline(primary_of_app(), _definition())
    return jsonify(pipeline), 201 if created else 200


@bp.put("/pipelines/<name>")
@require_role()
def replace_pipeline(name: str):
    """Replace NAME's definition; a definition with another name renames it."""
    return jsonify(lifecycle.replace_pipeline(primary_of_app(), name, _definition()))


@bp.delete("/pipelines/<name>")
@require_role()
def delete_pipeline(name: str):
    return jsonify(lifecycle.delete_pipeline(primary_of_app(), name))


@bp.get("/pipelines")
@require_role(*VIEW)
def list_pipelines():
    return jsonify({"pipelines": pipelines.list_pipelines(primary_of_app())})


@bp.get("/pipelines/<name>")
@require_role(*VIEW)
def get_pipeline(name: str):
    return jsonify(pipelines.get_pipeline(primary_of_app(), name))


@bp.post("/pipelines/<name>/runs")
@require_role()
def trigger_run(name: str):
    body = json_body() if request.get_data(cache=True).strip() else {}
    run_id = triggers.trigger(primary_of_app(), name, body, caller())
    return jsonify({"id": run_id}), 201


@bp.post("/runs/<int:run_id>/again")
@require_role()
def run_again(run_id: int):
    run = triggers.run_again(primary_of_app(), run_id, caller())
    return jsonify({"id": run}), 201


@bp.get("/runs")
@require_role(*VIEW)
def list_runs():
    state = request.args.get("state")
    if state and state not in RUN_STATES:
        raise BadRequest(f"state: must be one of {', '.join(RUN_STATES)}")
    limit = whole_number(request.args.get("limit", "100"), "limit")
    if not 1 <= limit <= 100:
        raise BadRequest("limit: must be 1 to 100")
    before = request.args.get("before")
    listed = runs.list_runs(
        primary_of_app(),
        request.args.get("pipeline"),
        state,
        limit,
        before=whole_number(before, "before") if before is not None else None,
    )
    return jsonify({"runs": listed})


@bp.get("/runs/<int:run_id>")
@require_role(*VIEW)
def get_run(run_id: int):
    return jsonify(runs.get_run(primary_of_app(), run_id))


@bp.get("/runs/<int:run_id>/notifications")
@require_role(*VIEW)
def run_notifications(run_id: int):
    found = notifications.for_run(primary_of_app(), run_id)
    if found is None:
        raise runs.missing_run(primary_of_app(), run_id)  # 404, or 410 once pruned
    return jsonify({"notifications": found})


@bp.get("/runs/<int:run_id>/artifacts")
@require_role(*VIEW)
def list_artifacts(run_id: int):
    primary = primary_of_app()
    runs.get_run(primary, run_id)  # 404, or 410 once pruned
    return jsonify({"artifacts": artifacts.list_for_run(primary, run_id)})


@bp.get("/runs/<int:run_id>/jobs/<job>/artifacts.tar")
@require_role(*VIEW)
def get_artifacts(run_id: int, job: str):
    attempt = request.args.get("attempt")
    number = whole_number(attempt, "attempt") if attempt is not None else None
    primary = primary_of_app()
    runs.get_run(primary, run_id)  # 404, or 410 once pruned
    return downloads.artifacts_tar(*artifacts.read(primary, run_id, job, number))


@bp.get("/runs/<int:run_id>/jobs/<job>/artifacts/<path:path>")
@require_role(*VIEW)
def get_artifact_file(run_id: int, job: str, path: str):
    attempt = request.args.get("attempt")
    number = whole_number(attempt, "attempt") if attempt is not None else None
    primary = primary_of_app()
    runs.get_run(primary, run_id)  # 404, or 410 once pruned
    return downloads.artifact_file(*artifacts.read_file(primary, run_id, job, path, number))


@bp.post("/runs/<int:run_id>/cancel")
@require_role()
def cancel_run(run_id: int):
    return jsonify(runs.cancel_run(primary_of_app(), run_id))


@bp.get("/runs/<int:run_id>/jobs/<job>/log")
@require_role(*VIEW)
def job_log(run_id: int, job: str):
    primary = primary_of_app()
    run = runs.get_run(primary, run_id)
    match = next((j for j in run["jobs"] if j["name"] == job), None)
    if match is None:
        raise NotFound(f"run {run_id} has no job {job!r}")
    offset = _offset()
    end = match["log_size"]  # a fixed end: the answer is consistent even while the job writes
    chunks = primary.logs.iter_bytes(run_id, run["attempt"], job, min(offset, end), end)
    complete = match["state"] not in ("pending", "running")
    return _log_response(chunks, complete, end, run["attempt"])


@bp.get("/runs/<int:run_id>/attempts/<int:attempt>/jobs/<job>/log")
@require_role(*VIEW)
def attempt_job_log(run_id: int, attempt: int, job: str):
    """One job's output in one attempt: also that of an attempt lost or taken back."""
    primary = primary_of_app()
    info = runs.attempt_log(primary, run_id, attempt, job)
    end = info["size"]
    chunks = primary.logs.iter_bytes(run_id, attempt, job, min(_offset(), end), end)
    response = _log_response(chunks, info["complete"], end, attempt)
    response.headers["X-Attempt-Outcome"] = info["outcome"] or "current"
    return response


@bp.get("/runs/<int:run_id>/log")
@require_role(*VIEW)
def run_log_view(run_id: int):
    chunks, complete = run_log(primary_of_app(), run_id, _offset())
    return _log_response(chunks, complete, None, None)


def _log_response(chunks, complete: bool, size: int | None, attempt: int | None) -> Response:
    response = Response(chunks, mimetype="application/octet-stream")
    response.headers["X-Log-Complete"] = "true" if complete else "false"
    if size is not None:
        response.headers["X-Log-Size"] = str(size)
    if attempt is not None:
        response.headers["X-Run-Attempt"] = str(attempt)
    return response


@bp.get("/status")
@require_role(*VIEW)
def status():
    return jsonify(workers.status_counts(primary_of_app()))


@bp.post("/workers/<worker_id>/<action>")
@require_role()
def worker_action(worker_id: str, action: str):
    if action not in workers.FLAG_ACTIONS:
        raise NotFound(f"no worker action {action!r}; use lock, unlock, drain or flood")
    flag, on = workers.FLAG_ACTIONS[action]
    by = f"token {caller()['token']}"
    return jsonify(workers.set_flag(primary_of_app(), worker_id, flag, on, by=by))


@bp.get("/workers/<worker_id>/history")
@require_role(*VIEW)
def worker_history_view(worker_id: str):
    primary = primary_of_app()
    worker = workers.get_worker(primary, worker_id)  # 404 for no such worker
    return jsonify({"history": worker_history.history(primary, worker["id"])})


@bp.put("/workers/<worker_id>/tags")
@require_role()
def worker_tags(worker_id: str):
    return jsonify(workers.set_tags(primary_of_app(), worker_id, json_body().get("tags")))


@bp.put("/workers/<worker_id>/root-jobs")
@require_role()
def worker_root_jobs(worker_id: str):
    allowed = json_body().get("allowed")
    return jsonify(workers.set_root_jobs(primary_of_app(), worker_id, allowed))


@bp.post("/pipelines/<name>/cache/clear")
@require_role()
def clear_cache(name: str):
    return jsonify(pipelines.clear_cache(primary_of_app(), name))


@bp.get("/pipelines/<name>/files")
@require_role(*VIEW)
def list_files(name: str):
    return jsonify({"files": static_files.list_files(primary_of_app(), name)})


@bp.put("/pipelines/<name>/files/<path:path>")
@require_role()
def put_file(name: str, path: str):
    primary = primary_of_app()
    request.max_content_length = primary.config.max_static_file_bytes
    return jsonify(static_files.put_file(primary, name, path, request.stream))


@bp.get("/pipelines/<name>/files/<path:path>")
@require_role(*VIEW)
def get_file(name: str, path: str):
    info, chunks = static_files.read_file(primary_of_app(), name, path)
    response = Response(chunks, mimetype="application/octet-stream")
    response.headers["X-Sha256"] = info["sha256"]
    response.headers["Content-Length"] = str(info["size"])
    return response


@bp.delete("/pipelines/<name>/files/<path:path>")
@require_role()
def delete_file(name: str, path: str):
    static_files.delete_file(primary_of_app(), name, path)
    return "", 204


@bp.delete("/workers/<worker_id>")
@require_role()
def delete_worker(worker_id: str):
    return jsonify(workers.delete_worker(primary_of_app(), worker_id))


@bp.get("/pipelines/<name>/secrets")
@require_role(*VIEW)
def list_secrets(name: str):
    return jsonify({"secrets": pipeline_secrets.names(primary_of_app(), name)})


@bp.put("/pipelines/<name>/secrets/<secret>")
@require_role()
def set_secret(name: str, secret: str):
    value = request.get_data(cache=False)
    return jsonify(pipeline_secrets.set_secret(primary_of_app(), name, secret, value))


@bp.delete("/pipelines/<name>/secrets/<secret>")
@require_role()
def delete_secret(name: str, secret: str):
    pipeline_secrets.delete_secret(primary_of_app(), name, secret)
    return "", 204


@bp.get("/retention")
@require_role(*VIEW)
def get_retention():
    return jsonify({"policy": retention.fleet_policy(primary_of_app())})


@bp.put("/retention")
@require_role()
def set_retention():
    return jsonify({"policy": retention.set_fleet_policy(primary_of_app(), json_body())})


@bp.post("/retention/prune")
@require_role()
def prune_now():
    """A pass of the policy now (`?dry_run=true`: what it would delete, deleting nothing)."""
    primary = primary_of_app()
    dry_run = request.args.get("dry_run", "false")
    if dry_run not in ("true", "false"):
        raise BadRequest("dry_run: must be true or false")
    if dry_run == "true":
        return jsonify(
            {
                "dry_run": True,
                "would_prune": retention.would_prune(primary),
                "would_forget_homes": retention.would_forget_homes(primary),
            }
        )
    report = janitor.prune(primary, f"{presence.name_of(primary)}:api", budget=PRUNE_BUDGET)
    if report is None:
        raise conflict("janitor_busy", "another retention pass is running; nothing was pruned")
    return jsonify({"dry_run": False, "pruned": report.as_dict()})
