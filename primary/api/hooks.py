"""Forge webhooks (public port, no bearer token: the hook secret's signature is the
credential), and the admin views that show and rotate that secret.

Bounded work for anyone who can reach the port: the body is read up to MAX_HOOK_BYTES
(413 past that, before anything is parsed or hashed), and its signature is checked (one
HMAC) before anything else. A source whose unsigned deliveries (400, 401, 413) number more
than `hook_failures` in `hook_window` seconds gets 429 for its next unsigned ones until
the oldest refusal ages out, as registration does; a signed delivery is never limited.
"""

from flask import Blueprint, current_app, jsonify, request

from primary.api.auth import primary_of_app, require_role
from primary.api.ratelimit import refuse_when_limited
from primary.errors import ApiError
from primary.server.bounds import source_key
from primary.sources import webhooks

bp = Blueprint("hooks", __name__)
HOOK_PATH = "/hooks/v1/pipelines/{name}"


class TooLarge(ApiError):
    status = 413
    code = "too_large"


@bp.post("/hooks/v1/pipelines/<name>")
def receive(name: str):
    limiter = current_app.extensions["cifleet.hook_limiter"]
    source = source_key(request.remote_addr or "unknown")
    primary = primary_of_app()
    try:
        limit = webhooks.MAX_HOOK_BYTES
        if (request.content_length or 0) > limit:
            raise TooLarge(f"a delivery is at most {limit} bytes")
        body = request.stream.read(limit + 1)
        if len(body) > limit:
            raise TooLarge(f"a delivery is at most {limit} bytes")
        signed = webhooks.authenticate(primary, name, request.headers, body)
    except ApiError as e:
        # Only what is not signed counts and is limited: a forge's genuine deliveries are
        # never refused because someone else sent bad ones from its addresses.
        if 400 <= e.status < 500:
            refuse_when_limited(limiter, source, "refused deliveries")
            limiter.failed(source)
        raise
    status, answer = webhooks.receive(primary, signed, body)
    return jsonify(answer), status


@bp.get("/api/v1/pipelines/<name>/hook")
@require_role()
def show_hook(name: str):
    secret = webhooks.hook_secret(primary_of_app(), name)
    return jsonify(_hook(name, secret))


@bp.post("/api/v1/pipelines/<name>/hook/rotate")
@require_role()
def rotate_hook(name: str):
    secret = webhooks.rotate_hook_secret(primary_of_app(), name)
    return jsonify(_hook(name, secret))


def _hook(name: str, secret: str) -> dict:
    return {
        "pipeline": name,
        "url": request.host_url.rstrip("/") + HOOK_PATH.format(name=name),
        "secret": secret,
        "content_type": "application/json",
    }
