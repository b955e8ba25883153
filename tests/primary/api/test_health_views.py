"""/healthz, /readyz and /metrics of the public app (Flask's test client, a real store)."""

import threading

import pytest
from fleet import init_primary
from prometheus_client.parser import text_string_to_metric_families

from primary.api.auth import KnownRoles
from primary.app import create_app
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.fleet.tokens import create_token
from primary.store.postgres import PostgresStore


@pytest.fixture
def site(tmp_path):
    data_dir = init_primary(tmp_path).data_dir
    primary = open_primary(PrimaryConfig(data_dir=data_dir, primary_worker_slots=0))
    stop = threading.Event()
    app = create_app(primary, stop)
    return primary, stop, app.test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_metrics_need_a_metrics_viewer_or_admin_token(site):
    primary, _, client = site
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("cft_not-a-token")).status_code == 401
    for role in ("metrics", "viewer", "admin"):
        answer = client.get("/metrics", headers=bearer(create_token(primary.store, role, role)))
        assert answer.status_code == 200, role
        assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
        names = {f.name for f in text_string_to_metric_families(answer.get_data(as_text=True))}
        assert {"cifleet_workers", "cifleet_runs_finished", "process_cpu_seconds"} <= names


def test_a_metrics_token_reads_nothing_else(site):
    primary, _, client = site
    token = create_token(primary.store, "prometheus", "metrics")
    for path in ("/api/v1/runs", "/api/v1/workers", "/api/v1/status", "/api/v1/worker-secret"):
        answer = client.get(path, headers=bearer(token))
        assert answer.status_code == 403, path
        assert answer.get_json()["code"] == "forbidden"


def test_openmetrics_when_the_scraper_asks_for_it(site):
    primary, _, client = site
    token = create_token(primary.store, "prometheus", "metrics")
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    answer = client.get("/metrics", headers={**bearer(token), "Accept": accept})
    assert answer.status_code == 200
    assert answer.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert answer.get_data().endswith(b"# EOF\n")


def test_ready_until_a_listener_goes_down_or_the_primary_stops(site):
    primary, stop, client = site
    serving = {"public": True, "agent": True}
    primary.listeners.update(public=lambda: serving["public"], agent=lambda: serving["agent"])
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "ready",
        "checks": {"store": "ok", "listeners": {"agent": "up", "public": "up"}, "stopping": False},
    }
    serving["agent"] = False
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["listeners"] == {"agent": "down", "public": "up"}
    serving["agent"] = True
    stop.set()
    answer = client.get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json()["checks"]["stopping"] is True
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_not_ready_when_the_store_cannot_be_read(site, tmp_path):
    primary, _, client = site
    primary.store.close()
    primary.store.path = tmp_path / "gone" / "cifleet.db"  # its folder does not exist
    answer = client.get("/readyz")
    assert answer.status_code == 503
    body = answer.get_json()
    assert body["checks"]["store"] == "unreachable"
    assert "gone" not in answer.get_data(as_text=True)  # no path for an unauthenticated caller


def test_a_scrape_while_the_database_is_down_says_so_with_a_token_seen_before(site, tmp_path):
    """PostgreSQL gone (a socket folder with no server): the store answers 503 to every
    read, the token check included. /metrics alone takes a token this process saw valid
    before at its role then; any other token, and every other view, get the 503."""
    primary, _, client = site
    scraper = bearer(create_token(primary.store, "prometheus", "metrics"))
    admin = bearer(create_token(primary.store, "ops", "admin"))
    unseen = bearer(create_token(primary.store, "late", "metrics"))
    assert client.get("/metrics", headers=scraper).status_code == 200
    assert client.get("/api/v1/status", headers=admin).status_code == 200
    primary.store.close()
    primary.store = PostgresStore(f"postgresql://cifleet@/fleet?host={tmp_path}")
    answer = client.get("/metrics", headers=scraper)
    assert answer.status_code == 200
    samples = {
        s.name: s.value
        for f in text_string_to_metric_families(answer.get_data(as_text=True))
        for s in f.samples
    }
    assert samples["cifleet_store_up"] == 0
    assert "cifleet_workers" not in samples
    for headers in (unseen, bearer("cft_never-issued")):
        answer = client.get("/metrics", headers=headers)
        assert (answer.status_code, answer.get_json()["code"]) == (503, "storage_unavailable")
    answer = client.get("/api/v1/status", headers=admin)  # only /metrics goes by memory
    assert (answer.status_code, answer.get_json()["code"]) == (503, "storage_unavailable")
    assert client.get("/readyz").status_code == 503


def test_a_token_the_store_calls_unknown_is_forgotten_and_memory_is_bounded():
    known = KnownRoles()
    known.found("h1", "metrics")
    known.found("h1", None)  # revoked
    assert known.get("h1") is None
    for i in range(KnownRoles.MAX + 10):
        known.found(f"t{i}", "viewer")
    assert known.get("t9") is None and known.get("t10") == "viewer"
    assert known.get(f"t{KnownRoles.MAX + 9}") == "viewer"
