"""Worker registration (public port, no token: the worker secret is the credential)."""

from flask import Blueprint, current_app, jsonify, request

from agent.protocol import REGISTER_PATH
from primary.api.auth import primary_of_app
from primary.api.parse import json_body
from primary.api.ratelimit import refuse_when_limited
from primary.fleet import registration
from primary.server.bounds import source_key

bp = Blueprint("register", __name__)


@bp.post(REGISTER_PATH)
def register():
    primary = primary_of_app()
    limiter = current_app.extensions["cifleet.registration_limiter"]
    source = source_key(request.remote_addr or "unknown")
    refuse_when_limited(limiter, source, "failed registrations")
    try:
        reply = registration.register(primary, json_body())
    except BaseException:
        # Every refusal counts (a taken name, a 5xx too): nothing a caller sends may let
        # it try without limit.
        limiter.failed(source)
        raise
    # The agent reaches the agent port under the same name it used for us.
    host = request.host
    host = host[: host.index("]") + 1] if host.startswith("[") else host.split(":")[0]
    reply["agent_url"] = f"https://{host}:{primary.config.agent_port}"
    if primary.agent_urls:  # several primaries share the fleet: the others too
        reply["primaries"] = primary.agent_urls
    return jsonify(reply), 201
