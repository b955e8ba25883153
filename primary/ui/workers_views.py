"""Workers page: the fleet table (refreshed in place) and the admin actions on a worker."""

from flask import Blueprint, render_template, request, url_for

from primary.api.auth import primary_of_app
from primary.errors import NotFound
from primary.fleet import worker_history, workers
from primary.ui.fleet import homes_by_worker, parse_tags, worker_attempts, workers_with_homes
from primary.ui.respond import done
from primary.ui.session import current_user, require_admin

bp = Blueprint("workers", __name__, url_prefix="/workers")
RECENT_ATTEMPTS = 50
RECENT_STATES = 20
ACTION_WORDS = {"lock": "locked", "unlock": "unlocked", "drain": "draining", "flood": "flooded"}


@bp.get("")
def index():
    return render_template("workers.html", workers=workers_with_homes(primary_of_app()))


@bp.get("/table")
def table():
    """The table alone, for the page's periodic refresh."""
    return render_template("workers_table.html", workers=workers_with_homes(primary_of_app()))


@bp.get("/<worker_id>")
def show(worker_id: str):
    """One worker: what the table shows, what it runs now and what it ran (its attempts,
    newest first), with links to each run and to all of its runs in Runs."""
    primary = primary_of_app()
    worker = workers.get_worker(primary, worker_id)
    worker["homes"] = homes_by_worker(primary).get(worker["id"], [])
    attempts = worker_attempts(primary, worker["id"], RECENT_ATTEMPTS)
    return render_template(
        "worker_show.html",
        worker=worker,
        current=[
            a for a in attempts if a["outcome"] is None and a["state"] in ("assigned", "running")
        ],
        attempts=attempts,
        history=worker_history.history(primary, worker["id"], RECENT_STATES),
    )


@bp.post("/<worker_id>/flags/<action>")
@require_admin
def flag(worker_id: str, action: str):
    if action not in workers.FLAG_ACTIONS:
        raise NotFound(f"no worker action {action!r}; use lock, unlock, drain or flood")
    name, on = workers.FLAG_ACTIONS[action]
    by = f"user {current_user().name}"
    worker = workers.set_flag(primary_of_app(), worker_id, name, on, by=by)
    return done(f"{worker['name']}: {ACTION_WORDS[action]}", url_for(".index"), worker=worker)


@bp.post("/<worker_id>/root-jobs/<action>")
@require_admin
def root_jobs(worker_id: str, action: str):
    if action not in ("allow", "deny"):
        raise NotFound(f"no root-jobs action {action!r}; use allow or deny")
    worker = workers.set_root_jobs(primary_of_app(), worker_id, action == "allow")
    word = "allowed" if worker["root_jobs"] else "not allowed"
    return done(f"{worker['name']}: root jobs {word}", url_for(".index"), worker=worker)


@bp.post("/<worker_id>/tags")
@require_admin
def tags(worker_id: str):
    new_tags = parse_tags(request.form.get("tags", ""))
    worker = workers.set_tags(primary_of_app(), worker_id, new_tags)
    shown = ", ".join(worker["tags"]) or "none"
    return done(f"{worker['name']}: tags {shown}", url_for(".index"), worker=worker)


@bp.get("/<worker_id>/deregister")
@require_admin
def deregister_confirm(worker_id: str):
    primary = primary_of_app()
    worker = workers.get_worker(primary, worker_id)
    homes = next(w["homes"] for w in workers_with_homes(primary) if w["id"] == worker["id"])
    return render_template("worker_deregister.html", worker=worker, homes=homes)


@bp.post("/<worker_id>/deregister")
@require_admin
def deregister(worker_id: str):
    removed = workers.delete_worker(primary_of_app(), worker_id)
    return done(f"{removed['name']} was de-registered", url_for(".index"))
