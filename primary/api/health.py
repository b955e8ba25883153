"""What operators probe and scrape on the public port: liveness (`/healthz`), readiness
(`/readyz`), and the Prometheus metrics (`/metrics`, with a metrics or viewer token)."""

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client.exposition import choose_encoder

from agent import __version__
from primary.api.auth import primary_of_app, require_role
from primary.metrics import metrics_of
from primary.metrics.readiness import readiness

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok", "version": __version__})


@bp.get("/readyz")
def readyz():
    ready, checks = readiness(primary_of_app(), current_app.extensions["cifleet.stop"].is_set())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), (
        200 if ready else 503
    )


@bp.get("/metrics")
@require_role("viewer", "metrics", while_store_down=True)  # it reports the store down
def metrics():
    # The text format, or OpenMetrics when the scraper asks for it.
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(metrics_of(primary_of_app()).registry)
    return Response(body, content_type=content_type)
