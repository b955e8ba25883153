"""The web UI on the public port: server-rendered pages, a session login, a little JS.

`bp` is the parent blueprint. What every page shares lives here: the login requirement,
the CSRF check on every unsafe request, security headers, HTML error pages, the templates
and the static files. Each page family is a child blueprint in its own module (views only:
parse, call a service, render), registered at the bottom of this file.
"""

import logging

from flask import (
    Blueprint,
    Flask,
    current_app,
    jsonify,
    redirect,
    request,
    send_from_directory,
    url_for,
)
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from agent import __version__
from primary.api.ratelimit import FailureLimiter
from primary.context import Primary
from primary.errors import ApiError, Forbidden, Unauthorized
from primary.ui import session as ui_session
from primary.ui.format import install_filters
from primary.ui.respond import error_page

log = logging.getLogger("cifleet.primary")

bp = Blueprint(
    "ui",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui/static",
)

# Nav entries: (label, endpoint, admin only). An entry shows once its endpoint exists.
NAV = (
    ("Workers", "ui.workers.index", False),
    ("Pipelines", "ui.pipelines.index", False),
    ("Runs", "ui.runs.index", False),
    ("Settings", "ui.settings.worker", True),
)

# The pages need nothing from elsewhere: no inline script or style, no other origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


# Paths of machine clients: an unknown one is answered in JSON, as the API answers.
MACHINE_PATHS = ("/api/", "/hooks/", "/agent/")


def init_app(app: Flask, primary: Primary) -> None:
    ui_session.configure(app, primary)
    app.extensions["cifleet.login_limiter"] = FailureLimiter(
        primary.config.login_failures, primary.config.login_window
    )
    install_filters(app)
    app.register_blueprint(bp)
    app.register_error_handler(404, unknown_path)


def unknown_path(err: HTTPException):
    """A URL no route has: the styled page for a browser, JSON for a machine client."""
    wants_page = request.accept_mimetypes.accept_html and not request.path.startswith(MACHINE_PATHS)
    if not wants_page:
        return jsonify({"error": err.description, "code": "not_found"}), 404
    return error_page(404, f"there is no page at {request.path}", "not_found", {})


@bp.before_request
def require_login_and_csrf():
    if request.endpoint == "ui.static":
        return None
    view = current_app.view_functions.get(request.endpoint)
    if not getattr(view, "ui_public", False) and ui_session.current_user() is None:
        if ui_session.is_fetch() or request.method not in ui_session.SAFE_METHODS:
            raise Unauthorized("you are not logged in (or the session ended); log in again")
        return redirect(url_for("ui.auth.login", next=request.full_path.rstrip("?")))
    if request.method not in ui_session.SAFE_METHODS and not ui_session.csrf_ok():
        err = Forbidden(
            "the form is stale or did not come from this site (CSRF token missing or wrong);"
            " reload the page and try again"
        )
        err.code = "csrf"
        raise err
    return None


@bp.get("/favicon.ico")  # for what a browser asks before it reads a page's <link>
@ui_session.public
def favicon():
    response = send_from_directory(bp.static_folder, "favicon.svg", mimetype="image/svg+xml")
    response.cache_control.max_age = 86400
    return response


@bp.after_request
def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint not in ("ui.static", "ui.favicon"):
        # Pages hold CSRF tokens (and, once revealed, the worker secret): keep them out of
        # caches and the back-forward cache.
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor  # also for the error page of a URL outside the UI's routes
def template_globals() -> dict:
    user = ui_session.current_user()
    nav = [
        (label, endpoint)
        for label, endpoint, admin_only in NAV
        if endpoint in current_app.view_functions and user and (user.is_admin or not admin_only)
    ]
    return {
        "csrf_token": ui_session.csrf_token,
        "csrf_field": csrf_field,
        "current_user": user,
        "nav": nav,
        "version": __version__,
    }


def csrf_field() -> Markup:
    """The hidden input every form carries: `{{ csrf_field() }}`."""
    token = escape(ui_session.csrf_token())
    return Markup(f'<input type="hidden" name="{ui_session.CSRF_FIELD}" value="{token}">')


@bp.errorhandler(ApiError)
def api_error(err: ApiError):
    return error_page(err.status, err.message, err.code, err.headers)


@bp.errorhandler(HTTPException)
def http_error(err: HTTPException):
    return error_page(err.code or 500, err.description or err.name, "http_error", {})


@bp.errorhandler(Exception)
def unexpected(err: Exception):
    log.exception("unhandled error in the UI")
    return error_page(500, "internal error; see the primary's log", "internal", {})


# Child blueprints, one per page family. Imported here, after `bp` exists.
from primary.ui import (  # noqa: E402
    auth_views,
    pipelines_views,
    runs_views,
    secrets_views,
    settings_views,
    workers_views,
)

bp.register_blueprint(auth_views.bp)
bp.register_blueprint(workers_views.bp)
bp.register_blueprint(pipelines_views.bp)
bp.register_blueprint(secrets_views.bp)
bp.register_blueprint(runs_views.bp)
bp.register_blueprint(settings_views.bp)
