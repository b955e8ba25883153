"""Agent API (agent port, mutual TLS): parse, call the dispatch service, render."""

from collections.abc import Callable

from flask import Blueprint, Response, current_app, g, jsonify, request

from agent.protocol import MAX_LOG_CHUNK_BYTES
from primary.api import long_poll
from primary.api.auth import primary_of_app, require_worker
from primary.api.parse import json_body, whole_number
from primary.errors import ApiError, BadRequest
from primary.fleet import credentials, workers
from primary.metrics import metrics_of
from primary.pipelines import static_files
from primary.runs import artifacts, dispatch
from primary.server import deferral

bp = Blueprint("agent", __name__, url_prefix="/agent/v1")


def _attempt(body: dict) -> int:
    attempt = body.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
        raise BadRequest("attempt: must be a whole number")
    return attempt


@bp.post("/poll")
@require_worker
def poll():
    ext = current_app.extensions
    defer = request.environ.get(deferral.ENVIRON_KEY)
    outcome = long_poll.poll(
        primary_of_app(),
        ext["cifleet.poll_gate"],
        g.worker,
        json_body(),
        ext["cifleet.stop"],
        deferrable=defer is not None,
        heard=request.environ.get(deferral.PEER_HEARD_KEY),
        received=request.environ.get(deferral.RECEIVED_KEY),
    )
    if isinstance(outcome, long_poll.HeldPoll):
        defer(outcome)  # the server waits for the wake-up on its loop and answers then
        return Response(status=204)
    return jsonify(outcome)


@bp.post("/runs/<int:run_id>/start")
@require_worker
def start(run_id: int):
    return jsonify(dispatch.start_run(primary_of_app(), g.worker, run_id, _attempt(json_body())))


@bp.post("/runs/<int:run_id>/jobs/<job>/log")
@require_worker
def append_log(run_id: int, job: str):
    attempt = whole_number(request.args.get("attempt"), "attempt")
    offset = whole_number(request.args.get("offset"), "offset")
    if request.content_length is None or request.content_length > MAX_LOG_CHUNK_BYTES:
        err = ApiError(f"a log chunk must have a Content-Length of at most {MAX_LOG_CHUNK_BYTES}")
        err.status, err.code = 413, "too_large"
        raise err
    # Straight from the WSGI input, in pieces, to the file: werkzeug's request.stream adds
    # copies that cost more CPU than the rest of this request together (bench/logs.py).
    primary = primary_of_app()
    body = _CountingReader(request.environ["wsgi.input"].read)
    length = request.content_length
    try:
        answer = dispatch.append_log(primary, g.worker, run_id, job, attempt, offset, length, body)
    finally:
        metrics_of(primary).log_bytes_received(body.count)
    return jsonify(answer)


@bp.post("/runs/<int:run_id>/jobs/<job>/artifacts")
@require_worker
def store_artifacts(run_id: int, job: str):
    attempt = whole_number(request.args.get("attempt"), "attempt")
    if request.content_length is None:
        err = ApiError("artifacts need a Content-Length")
        err.status, err.code = 411, "length_required"
        raise err
    # From the WSGI input, past the app's request limit: the service has its own.
    read = request.environ["wsgi.input"].read
    return jsonify(
        artifacts.store(
            primary_of_app(), g.worker, run_id, job, attempt, request.content_length, read
        )
    )


class _CountingReader:
    """A body's read(n), counting the bytes it returned."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.count = 0

    def __call__(self, size: int) -> bytes:
        data = self._read(size)
        self.count += len(data)
        return data


@bp.post("/runs/<int:run_id>/jobs/<job>/status")
@require_worker
def job_status(run_id: int, job: str):
    return jsonify(dispatch.job_status(primary_of_app(), g.worker, run_id, job, json_body()))


@bp.post("/runs/<int:run_id>/finish")
@require_worker
def finish(run_id: int):
    body = json_body()
    return jsonify(
        dispatch.finish_run(primary_of_app(), g.worker, run_id, _attempt(body), body.get("job"))
    )


@bp.post("/runs/<int:run_id>/prepare")
@require_worker
def prepare(run_id: int):
    body = json_body()
    return jsonify(
        dispatch.prepare_notes(
            primary_of_app(),
            g.worker,
            run_id,
            _attempt(body),
            body.get("lines"),
            body.get("job_started"),
            body.get("commit"),
        )
    )


@bp.get("/runs/<int:run_id>/files/<path:path>")
@require_worker
def fetch_file(run_id: int, path: str):
    attempt = whole_number(request.args.get("attempt"), "attempt")
    primary = primary_of_app()
    run = dispatch.current_run(primary, g.worker, run_id, attempt)
    info, chunks = static_files.read_file(primary, run["pipeline"], path)
    response = Response(chunks, mimetype="application/octet-stream")
    response.headers["X-Sha256"] = info["sha256"]
    response.headers["Content-Length"] = str(info["size"])
    return response


@bp.post("/worker")
@require_worker
def update_self():
    return jsonify(workers.update_from_host(primary_of_app(), g.worker, json_body()))


@bp.post("/renew")  # RENEW_PATH
@require_worker
def renew():
    return jsonify(credentials.renew_certificate(primary_of_app(), g.worker, json_body()))
