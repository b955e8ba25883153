"""Settings -> Worker (admin only): the worker secret, its rotation, how to add a worker."""

from flask import Blueprint, render_template, request, url_for

from primary.api.auth import primary_of_app
from primary.fleet import registration, workers
from primary.ui.fleet import add_worker_commands
from primary.ui.respond import done
from primary.ui.session import require_admin

bp = Blueprint("settings", __name__, url_prefix="/settings")


def _worker_page(secret: str | None = None):
    primary = primary_of_app()
    # The URL this browser reached the primary by: workers register at the same address.
    url = request.host_url.rstrip("/")
    return render_template(
        "settings_worker.html",
        status=workers.status_counts(primary),
        commands=add_worker_commands(url, primary.data.ca_cert, primary.data.admin_token),
        primary_url=url,
        secret=secret,
    )


@bp.get("/worker")
@require_admin
def worker():
    return _worker_page()


@bp.post("/worker/secret")
@require_admin
def reveal_secret():
    """The secret, shown only on this explicit request (a POST: never in a cached GET)."""
    return _worker_page(secret=primary_of_app().vault.get("worker_secret"))


@bp.get("/worker/rotate")
@require_admin
def rotate_confirm():
    return render_template("settings_rotate.html")


@bp.post("/worker/rotate")
@require_admin
def rotate():
    registration.rotate_secret(primary_of_app())
    message = (
        "The worker secret was rotated. Registered workers stay connected;"
        " new ones need the new secret."
    )
    return done(message, url_for(".worker"))
