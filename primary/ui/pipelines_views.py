"""Pipelines pages: the list, a pipeline (definition, home, recent runs, static files),
and the admin actions: run, edit the definition, clear the cache, upload and delete files."""

import os

from flask import Blueprint, render_template, request, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from primary.api.auth import primary_of_app
from primary.errors import ApiError, BadRequest
from primary.pipelines import lifecycle, pipelines, static_files
from primary.pipelines import secrets as pipeline_secrets
from primary.runs import runs
from primary.sources import triggers
from primary.ui.respond import done, error_page, failed
from primary.ui.run_info import last_runs, run_count, worker_names
from primary.ui.session import current_user, require_admin

bp = Blueprint("pipelines", __name__, url_prefix="/pipelines")
# As the admin API takes them (POST /api/v1/pipelines).
MAX_DEFINITION_BYTES = 1 << 20
RECENT_RUNS = 10
NEW_DEFINITION = """\
name: hello
tags: [linux]
jobs:
  - name: greet
    steps:
      - echo hello
"""


# Room for the multipart framing and the form's other fields around an upload's file.
MULTIPART_SLACK = 64 << 10


@bp.url_value_preprocessor
def _upload_limit(endpoint: str | None, values: dict | None) -> None:
    # An upload may be as large as a static file may be, not just the usual request limit.
    # Set here because these preprocessors run before the parent blueprint's CSRF check,
    # which is what first reads (and so limits) the multipart body.
    # Only for an admin: anyone else is refused, and must not make the primary read (and
    # spool) a large body before the refusal.
    user = current_user()
    if endpoint == "ui.pipelines.upload" and user is not None and user.is_admin:
        limit = primary_of_app().config.max_static_file_bytes
        request.max_content_length = limit + MULTIPART_SLACK


def _too_large() -> ApiError:
    limit = primary_of_app().config.max_static_file_bytes
    err = ApiError(f"file: larger than the limit of {limit} bytes; nothing was stored")
    err.status, err.code = 413, "too_large"
    return err


@bp.errorhandler(RequestEntityTooLarge)
def _body_too_large(_: RequestEntityTooLarge):
    err = _too_large()
    return error_page(err.status, err.message, err.code, err.headers)


@bp.get("")
def index():
    primary = primary_of_app()
    return render_template(
        "pipelines.html",
        pipelines=pipelines.list_pipelines(primary),
        names=worker_names(primary),
        last=last_runs(primary),
    )


@bp.get("/<name>")
def show(name: str):
    primary = primary_of_app()
    pipeline = pipelines.get_pipeline(primary, name)
    return render_template(
        "pipeline_show.html",
        pipeline=pipeline,
        home=worker_names(primary).get(pipeline["home_worker_id"]),
        files=static_files.list_files(primary, name),
        secrets=pipeline_secrets.overview(primary, name),
        runs=runs.list_runs(primary, name, limit=RECENT_RUNS),
    )


@bp.post("/<name>/runs")
@require_admin
def trigger(name: str):
    user = current_user()
    primary = primary_of_app()
    unset = pipeline_secrets.missing(primary, pipelines.get_spec(primary, name))
    if unset:
        # Not a dead end: back to the pipeline page, where the secrets can be set.
        message = f"{name} needs secrets that are not set: {', '.join(unset)}; set them below"
        return failed(message, url_for(".show", name=name, _anchor="secrets"))
    try:
        run_id = triggers.trigger(primary, name, _trigger_body(), {"kind": "ui", "user": user.name})
    except BadRequest as err:  # a parameter or ref not valid: back to the form, with why
        return failed(err.message, url_for(".show", name=name, _anchor="run-with"), 400)
    return done(f"run {run_id} queued", url_for("ui.runs.show", run_id=run_id), id=run_id)


def _trigger_body() -> dict:
    """The Run with parameters form as the admin API's trigger body: `env.NAME` fields
    (text, as a form sends them; the service checks their types) and `ref`."""
    body: dict = {}
    env = {k[4:]: v for k, v in request.form.items() if k.startswith("env.")}
    if env:
        body["env"] = env
    ref = request.form.get("ref", "").strip()
    if ref:
        body["ref"] = ref
    return body


@bp.get("/_new")  # "_" starts no pipeline name
@require_admin
def new():
    return render_template("pipeline_edit.html", definition=NEW_DEFINITION, pipeline=None)


@bp.get("/<name>/edit")
@require_admin
def edit(name: str):
    pipeline = pipelines.get_pipeline(primary_of_app(), name)
    return render_template(
        "pipeline_edit.html", definition=pipeline["definition"], pipeline=pipeline
    )


@bp.post("")
@require_admin
def save():
    """Create or replace a pipeline from the form's YAML. On a mistake the page comes back
    with the text as typed and the error (field, line) next to it; nothing is stored."""
    # Browsers send CR LF in a textarea; the definition is stored as submitted otherwise.
    text = request.form.get("definition", "").replace("\r\n", "\n")
    editing = request.form.get("editing") or None
    try:
        if len(text.encode()) > MAX_DEFINITION_BYTES:
            raise BadRequest(f"the definition is larger than {MAX_DEFINITION_BYTES} bytes")
        if editing:  # replaces the pipeline edited: another name renames it
            pipeline, created = lifecycle.replace_pipeline(primary_of_app(), editing, text), False
        else:
            pipeline, created = pipelines.save_pipeline(primary_of_app(), text)
    except ApiError as err:  # invalid, a name taken, or the store could not take it
        return _edit_again(text, editing, err)
    if editing and pipeline["name"] != editing:
        message = f"pipeline {editing} renamed to {pipeline['name']} and saved"
    else:
        message = f"pipeline {pipeline['name']} {'created' if created else 'saved'}"
    return done(message, url_for(".show", name=pipeline["name"]))


@bp.get("/<name>/delete")
@require_admin
def delete_confirm(name: str):
    primary = primary_of_app()
    pipeline = pipelines.get_pipeline(primary, name)
    return render_template(
        "pipeline_delete.html",
        pipeline=pipeline,
        files=static_files.list_files(primary, name),
        secrets=pipeline_secrets.overview(primary, name),
        run_count=run_count(primary, name),
    )


@bp.post("/<name>/delete")
@require_admin
def delete(name: str):
    result = lifecycle.delete_pipeline(primary_of_app(), name)
    message = f"pipeline {name} deleted; its runs stay in Runs ({result['runs_kept']})"
    return done(message, url_for(".index"))


def _edit_again(text: str, editing: str | None, err: ApiError):
    line = err.fields.get("line")
    lines = text.split("\n")
    shown = lines[line - 1] if line and 0 < line <= len(lines) else None
    pipeline = {"name": editing} if editing else None
    page = render_template(
        "pipeline_edit.html",
        definition=text,
        pipeline=pipeline,
        error=err.message,
        error_field=err.fields.get("field"),
        error_line=line,
        error_text=shown,
    )
    return page, err.status


@bp.get("/<name>/cache/clear")
@require_admin
def clear_cache_confirm(name: str):
    primary = primary_of_app()
    pipeline = pipelines.get_pipeline(primary, name)
    home = worker_names(primary).get(pipeline["home_worker_id"])
    return render_template("pipeline_clear_cache.html", pipeline=pipeline, home=home)


@bp.post("/<name>/cache/clear")
@require_admin
def clear_cache(name: str):
    pipelines.clear_cache(primary_of_app(), name)
    return done(
        f"{name}: cache cleared; its next run starts from an empty workspace",
        url_for(".show", name=name),
    )


@bp.post("/<name>/files")
@require_admin
def upload(name: str):
    """A multipart upload (Werkzeug spools the file to a temporary file past 500 KB),
    copied in chunks to the static files service."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise BadRequest("file: choose a file to upload")
    path = request.form.get("path", "").strip() or upload.filename
    stream = upload.stream
    stream.seek(0, os.SEEK_END)
    if stream.tell() > primary_of_app().config.max_static_file_bytes:
        raise _too_large()
    stream.seek(0)
    info = static_files.put_file(primary_of_app(), name, path, stream)
    return done(
        f"{info['path']} stored ({info['size']} bytes)", url_for(".show", name=name), file=info
    )


@bp.get("/<name>/files/<path:path>/delete")
@require_admin
def delete_file_confirm(name: str, path: str):
    info = static_files.file_info(primary_of_app(), name, static_files.normalise_path(path))
    return render_template("pipeline_file_delete.html", name=name, file=info)


@bp.post("/<name>/files/<path:path>/delete")
@require_admin
def delete_file(name: str, path: str):
    static_files.delete_file(primary_of_app(), name, path)
    return done(f"{path} deleted", url_for(".show", name=name))
