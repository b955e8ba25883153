"""/healthz, /readyz and /metrics of the public app (Flask's test client, a real store)."""

import threading

import pytest
from fleet import init_primary
from prometheus_client.parser import text_string_to_metric_families

from primary.app import create_app
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.fleet.tokens import create_token


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
