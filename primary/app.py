"""Flask application factories: one app per listener, sharing one Primary.

The public app (admin API, registration, health, the web UI) and the agent app (mutual
TLS only) are separate WSGI apps, so no agent route is reachable on the public port and no
admin route on the agent port.
"""

import logging
import threading

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from primary import ui
from primary.api import admin as admin_views
from primary.api import agent as agent_views
from primary.api import health as health_views
from primary.api import hooks as hook_views
from primary.api import register as register_views
from primary.api.auth import KnownRoles
from primary.api.long_poll import PollGate
from primary.api.parse import Int64Converter, check_request_text
from primary.api.ratelimit import FailureLimiter
from primary.config import PrimaryConfig
from primary.context import Primary, open_primary
from primary.errors import ApiError
from primary.metrics import metrics_of

log = logging.getLogger("cifleet.primary")


def _install_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(err: ApiError):
        body = {"error": err.message, "code": err.code, **err.fields}
        return jsonify(body), err.status, err.headers

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        code = {413: "too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            err.code or 500, "http_error"
        )
        return jsonify({"error": err.description, "code": code}), err.code

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        log.exception("unhandled error")
        return jsonify({"error": "internal error; see the primary's log", "code": "internal"}), 500


def _base_app(primary: Primary, name: str) -> Flask:
    app = Flask(name)
    app.config["MAX_CONTENT_LENGTH"] = primary.config.max_request_bytes
    app.json.sort_keys = False
    app.extensions["cifleet"] = primary
    # Before any route exists: every <int:...> (run ids, attempts) is bounded to 64 bits.
    app.url_map.converters["int"] = Int64Converter
    app.before_request(check_request_text)
    _install_error_handlers(app)
    return app


def create_app(config: PrimaryConfig | Primary, stop: threading.Event | None = None) -> Flask:
    """The public-port app. Starts no threads and opens no sockets. `stop` ends the web
    UI's live log streams early when the primary shuts down."""
    primary = config if isinstance(config, Primary) else open_primary(config)
    app = _base_app(primary, "cifleet.public")
    app.extensions["cifleet.stop"] = stop or threading.Event()
    app.extensions["cifleet.registration_limiter"] = FailureLimiter(
        primary.config.registration_failures, primary.config.registration_window
    )
    app.extensions["cifleet.hook_limiter"] = FailureLimiter(
        primary.config.hook_failures, primary.config.hook_window
    )
    app.extensions["cifleet.known_roles"] = KnownRoles()
    metrics_of(primary)  # counts from the start, not from the first scrape
    app.register_blueprint(health_views.bp)
    app.register_blueprint(register_views.bp)
    app.register_blueprint(admin_views.bp)
    app.register_blueprint(hook_views.bp)
    ui.init_app(app, primary)
    return app


def create_agent_app(primary: Primary, stop: threading.Event | None = None) -> Flask:
    """The agent-port app (served only behind a TLS listener that requires client certs).
    `stop` ends held polls early when the primary shuts down."""
    app = _base_app(primary, "cifleet.agent")
    app.extensions["cifleet.poll_gate"] = PollGate(primary.config.max_held_polls)
    app.extensions["cifleet.stop"] = stop or threading.Event()
    metrics_of(primary)
    app.register_blueprint(agent_views.bp)
    return app
