"""Runs pages: the list with filters, a run with its jobs and attempts, its live log (SSE,
primary/ui/log_stream.py), its raw logs, and Cancel."""

import datetime
import json
import re

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from primary.api import downloads
from primary.api.auth import primary_of_app
from primary.errors import BadRequest
from primary.fleet import workers
from primary.pipelines import pipelines
from primary.runs import artifacts, runs
from primary.runs.runlog import run_log
from primary.sources import triggers
from primary.ui import log_stream
from primary.ui.respond import done
from primary.ui.run_info import (
    ansi_before,
    gzip_chunks,
    line_start_before,
    lines_before,
    log_piece,
    prepare_lines,
    queue_positions,
    run_state,
    search_log,
    tail_start,
)
from primary.ui.session import current_user, require_admin

bp = Blueprint("runs", __name__, url_prefix="/runs")
SLOTS = "cifleet.ui_log_streams"
# A run page opens its log at most this far from the end (the raw log has all of it).
TAIL_BYTES = 1 << 20
# One piece of the log the page asks for: the whole tail of a finished run in one request.
MAX_PIECE_BYTES = 2 << 20
MAX_QUERY = 200
MAX_MATCHES = 200
# ASCII digits only: str.isdigit() also takes "²", which int() then refuses.
WHOLE_NUMBER = re.compile(r"[0-9]{1,18}")


@bp.record_once
def _make_slots(state) -> None:
    config = state.app.extensions["cifleet"].config
    state.app.extensions[SLOTS] = log_stream.StreamSlots(config.log_streams)


PAGE = 100
DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _filters() -> dict[str, str]:
    """The list's filters from the query string; a state that does not exist is refused,
    and so is a day that is not YYYY-MM-DD or a page mark that is not a run id."""
    keys = ("pipeline", "state", "worker", "from", "until", "before")
    chosen = {key: request.args.get(key, "").strip() for key in keys}
    if chosen["state"] and chosen["state"] not in runs.RUN_STATES:
        raise BadRequest(f"state: must be one of {', '.join(runs.RUN_STATES)}")
    for key in ("from", "until"):
        if chosen[key] and not (DAY.fullmatch(chosen[key]) and _day(chosen[key], key)):
            raise BadRequest(f"{key}: must be a day, YYYY-MM-DD")
    if chosen["before"] and not WHOLE_NUMBER.fullmatch(chosen["before"]):
        raise BadRequest("before: must be a run number")
    return chosen


def _day(text: str, key: str) -> float | None:
    """Midnight UTC starting the day (`from`) or after it (`until`, so the day is in)."""
    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return (day + datetime.timedelta(days=1 if key == "until" else 0)).timestamp()


def _listed(chosen: dict[str, str], limit: int = PAGE) -> list[dict]:
    return runs.list_runs(
        primary_of_app(),
        chosen["pipeline"] or None,
        chosen["state"] or None,
        limit,
        worker=chosen["worker"] or None,
        before=int(chosen["before"]) if chosen["before"] else None,
        created=tuple(_day(chosen[k], k) if chosen[k] else None for k in ("from", "until")),
    )


@bp.get("")
def index():
    primary = primary_of_app()
    chosen = _filters()
    listed = _listed(chosen)
    kept = {k: v for k, v in chosen.items() if v and k != "before"}
    older = url_for(".index", **kept, before=listed[-1]["id"]) if len(listed) == PAGE else None
    return render_template(
        "runs.html",
        runs=listed,
        queue=queue_positions(primary),
        chosen=chosen,
        pipeline_names=[p["name"] for p in pipelines.list_pipelines(primary)],
        worker_names=sorted(w["name"] for w in workers.list_workers(primary)),
        states=runs.RUN_STATES,
        # A page of older runs stays as it is; the newest page follows new runs.
        table_url=None if chosen["before"] else url_for(".table", **kept),
        older_url=older,
        newest_url=url_for(".index", **kept) if chosen["before"] else None,
    )


@bp.get("/go")
def go():
    """Jump to a run by its number (the Runs page's box)."""
    raw = request.args.get("id", "").strip().lstrip("#")
    if not WHOLE_NUMBER.fullmatch(raw):
        raise BadRequest("run: give a run number, e.g. 42")
    run = runs.get_run(primary_of_app(), int(raw))  # 404: the styled page says so
    return redirect(url_for(".show", run_id=run["id"]))


@bp.get("/table")
def table():
    """The table alone, for the periodic refresh (also the pipeline page's recent runs)."""
    limit = request.args.get("limit", str(PAGE))
    if not WHOLE_NUMBER.fullmatch(limit) or not 1 <= int(limit) <= PAGE:
        raise BadRequest(f"limit: must be a whole number from 1 to {PAGE}")
    return render_template(
        "runs_table.html",
        runs=_listed(_filters(), int(limit)),
        queue=queue_positions(primary_of_app()),
    )


def _summary_context(run_id: int) -> dict:
    primary = primary_of_app()
    run = runs.get_run(primary, run_id)
    return {
        "run": run,
        "prepare": prepare_lines(primary, run),
        "final": run["state"] in runs.FINAL_STATES,
        "artifacts": artifacts.list_for_run(primary, run_id),
    }


@bp.get("/<int:run_id>")
def show(run_id: int):
    primary = primary_of_app()
    context = _summary_context(run_id)
    start = tail_start(primary, context["run"], TAIL_BYTES)
    first_line = lines_before(primary, run_id, start) + 1 if start else 1
    state = json.dumps(run_state(primary, run_id), separators=(",", ":"))
    return render_template(
        "run_show.html", **context, start=start, first_line=first_line, live_state=state
    )


@bp.get("/<int:run_id>/summary")
def summary(run_id: int):
    """State and jobs, for the refresh when the log stream says the state changed."""
    return render_template("run_summary.html", **_summary_context(run_id))


@bp.get("/<int:run_id>/history")
def history(run_id: int):
    """Prepare environment and attempts, refreshed like the summary."""
    return render_template("run_history.html", **_summary_context(run_id))


def _start_offset() -> int:
    """Where a stream starts: the browser's Last-Event-ID on a reconnect, else `?offset=`."""
    raw = request.headers.get("Last-Event-ID") or request.args.get("offset") or "0"
    if not WHOLE_NUMBER.fullmatch(raw):
        raise BadRequest("offset: must be a whole number of bytes")
    return int(raw)


@bp.get("/<int:run_id>/events")
def events(run_id: int):
    primary = primary_of_app()
    runs.get_run(primary, run_id)  # 404 before a stream starts
    offset = _start_offset()
    slots: log_stream.StreamSlots = current_app.extensions[SLOTS]
    if not slots.take():
        return Response(
            log_stream.busy_answer(slots.size),
            503,
            {"Retry-After": str(log_stream.BUSY_RETRY_MS // 1000)},
            mimetype="text/event-stream",
        )
    seconds, stop = primary.config.log_stream_seconds, current_app.extensions["cifleet.stop"]
    stream = log_stream.follow(primary, run_id, offset, seconds, stop)
    response = Response(stream, mimetype="text/event-stream")
    response.call_on_close(slots.give_back)
    response.headers["X-Accel-Buffering"] = "no"  # a proxy in front must not hold events
    return response


def _number(name: str, default: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not WHOLE_NUMBER.fullmatch(raw):
        raise BadRequest(f"{name}: must be a whole number of bytes")
    return int(raw)


@bp.get("/<int:run_id>/log")
def raw_log(run_id: int):
    """The whole run log, exactly the bytes of GET /api/v1/runs/ID/log (`?download=1`: as a
    file). With `limit`, one piece of it for the run page, which follows a log with these
    plain requests and holds no connection: from `offset`, or the whole lines just before
    `before`; headers say where it starts and ends, whether the log is complete, and the
    run's state (read after the log, so a complete log comes with its final state); with
    `ansi=1`, also the colours the log has set where the piece starts (X-Log-Ansi)."""
    primary = primary_of_app()
    if "limit" not in request.args:
        runs.get_run(primary, run_id)  # 404 before the body starts
        chunks, _ = run_log(primary, run_id, 0)
        response = Response(chunks, mimetype="text/plain")
        if request.args.get("download"):
            response.headers["Content-Disposition"] = f'attachment; filename="run-{run_id}.log"'
        return response
    limit = _number("limit", 0)
    if not 1 <= limit <= MAX_PIECE_BYTES:
        raise BadRequest(f"limit: must be 1 to {MAX_PIECE_BYTES} bytes")
    runs.get_run(primary, run_id)
    if "before" in request.args:
        before = _number("before", 0)
        start = line_start_before(primary, run_id, before, limit)
        piece, _ = log_piece(primary, run_id, start, before - start)
        ends = False
    else:
        start = _number("offset", 0)
        piece, ends = log_piece(primary, run_id, start, limit)
    state = run_state(primary, run_id)
    response = Response(piece, mimetype="application/octet-stream")
    response.headers["X-Log-Offset"] = str(start)
    response.headers["X-Log-Next"] = str(start + len(piece))
    response.headers["X-Log-Complete"] = "true" if ends else "false"
    response.headers["X-Run-State"] = json.dumps(state, separators=(",", ":"))  # ASCII
    if request.args.get("ansi") == "1":
        colours = ansi_before(primary, run_id, start)
        response.headers["X-Log-Ansi"] = json.dumps(colours, separators=(",", ":"))
    return response


@bp.get("/<int:run_id>/log/search")
def search(run_id: int):
    """Lines of the whole log that contain `q`, for the run page's search (a log may be
    far longer than what the page holds)."""
    query = request.args.get("q", "")
    if not 1 <= len(query) <= MAX_QUERY:
        raise BadRequest(f"q: search for 1 to {MAX_QUERY} characters")
    primary = primary_of_app()
    runs.get_run(primary, run_id)
    return jsonify(search_log(primary, run_id, query, MAX_MATCHES))


@bp.get("/<int:run_id>/log.gz")
def raw_log_gzip(run_id: int):
    """The whole run log gzipped, as a file (compressed as it is read)."""
    primary = primary_of_app()
    runs.get_run(primary, run_id)
    chunks, _ = run_log(primary, run_id, 0)
    response = Response(gzip_chunks(chunks), mimetype="application/gzip")
    response.headers["Content-Disposition"] = f'attachment; filename="run-{run_id}.log.gz"'
    return response


@bp.get("/<int:run_id>/attempts/<int:attempt>/jobs/<job>/artifacts.tar")
def artifacts_tar(run_id: int, attempt: int, job: str):
    """A job's artifacts of one attempt, as the tar its worker sent (the API's too)."""
    primary = primary_of_app()
    runs.get_run(primary, run_id)
    return downloads.artifacts_tar(*artifacts.read(primary, run_id, job, attempt))


@bp.get("/<int:run_id>/attempts/<int:attempt>/jobs/<job>/artifacts/<path:path>")
def artifact_file(run_id: int, attempt: int, job: str, path: str):
    """One file of a job's artifacts of one attempt (the API's too)."""
    primary = primary_of_app()
    runs.get_run(primary, run_id)
    return downloads.artifact_file(*artifacts.read_file(primary, run_id, job, path, attempt))


@bp.get("/<int:run_id>/attempts/<int:attempt>/jobs/<job>/log")
def attempt_log(run_id: int, attempt: int, job: str):
    """One job's output in one attempt, also of an attempt that was lost or taken back."""
    primary = primary_of_app()
    info = runs.attempt_log(primary, run_id, attempt, job)
    chunks = primary.logs.iter_bytes(run_id, attempt, job, 0, info["size"])
    return Response(chunks, mimetype="text/plain")


@bp.post("/<int:run_id>/again")
@require_admin
def again(run_id: int):
    user = current_user()
    new = triggers.run_again(primary_of_app(), run_id, {"kind": "ui", "user": user.name})
    return done(f"run {new} queued", url_for(".show", run_id=new), id=new)


@bp.post("/<int:run_id>/cancel")
@require_admin
def cancel(run_id: int):
    run = runs.cancel_run(primary_of_app(), run_id)
    if run["state"] == "cancelled":
        message = f"run {run_id} was cancelled"
    else:
        message = f"run {run_id}: cancelling; its worker is told to stop"
    return done(message, url_for(".show", run_id=run_id), state=run["state"])
