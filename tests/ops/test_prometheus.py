"""A real Prometheus scrapes a real primary over TLS with a metrics token, and an agent's
--metrics-listen; its HTTP API then shows what the fleet did. The dashboard's queries and
the documented metric names are checked against what it scraped."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from fleet import (
    BIN,
    Agent,
    init_primary,
    kill_workspace_processes,
    passable,
    register_agent,
    wait_for,
)
from prometheus import BINARY, Prometheus

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not Path(BINARY).exists(), reason="prometheus is not installed (tests/run.sh installs it)"
    ),
]
DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(primary, agent, Prometheus): one agent with its metrics listener, no built-in
    worker, and a Prometheus scraping both every second. Everything stops at the end,
    whatever failed."""
    root = passable(tmp_path_factory.mktemp("prometheus-fleet"))
    primary = init_primary(root, "--heartbeat-timeout", "20", "--primary-worker-slots", "0")
    agent = prometheus = None
    try:
        primary.start()
        assert register_agent(primary, root, "m1", "metrics", slots=2).returncode == 0
        agent = Agent(name="m1", home=root / "m1", log_path=root / "m1.log")
        agent.args = ["--metrics-listen", "127.0.0.1:0"]
        agent.start()
        found = wait_for(
            lambda: re.search(rb"metrics at http://([\d.]+:\d+)/", agent.log_path.read_bytes()),
            30,
            "the agent's metrics address in its log",
        )
        token = subprocess.run(
            [str(BIN / "cifleet-primary"), "token", "create", "--name", "prometheus"]
            + ["--role", "metrics", "--data-dir", str(primary.data_dir)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        (root / "token").write_text(token + "\n")
        (root / "wrong-token").write_text("cft_not-a-token\n")
        target = [{"targets": [f"127.0.0.1:{primary.api_port}"]}]

        def primary_job(name: str, token_file: str, tls: dict) -> dict:
            return {
                "job_name": name,
                "scheme": "https",
                "static_configs": target,
                "tls_config": tls,
                "authorization": {"type": "Bearer", "credentials_file": str(root / token_file)},
            }

        ca = {"ca_file": str(primary.ca_file)}
        prometheus = Prometheus(
            root,
            [
                primary_job("cifleet", "token", ca),
                primary_job("cifleet-wrong-token", "wrong-token", ca),
                primary_job("cifleet-unknown-ca", "token", {}),  # the system CAs only
                {
                    "job_name": "cifleet-agent",
                    "static_configs": [{"targets": [found.group(1).decode()]}],
                },
            ],
        )
        prometheus.start()
        yield primary, agent, prometheus
    finally:
        if prometheus is not None:
            prometheus.close()
        if agent is not None:
            agent.stop()
            kill_workspace_processes(agent.home)
        primary.close()


def eventually(prometheus: Prometheus, expr: str, expected: float, timeout: float = 30):
    """Wait until the query's one series has the expected value (scrapes come each second)."""
    return wait_for(
        lambda: prometheus.value(expr) == expected,
        timeout,
        f"{expr} == {expected}",
        interval=0.25,
    )


def test_prometheus_scrapes_over_tls_with_the_token_only(fleet):
    _, _, prometheus = fleet
    eventually(prometheus, 'up{job="cifleet"}', 1)
    eventually(prometheus, 'up{job="cifleet-agent"}', 1)
    eventually(prometheus, 'up{job="cifleet-wrong-token"}', 0)
    eventually(prometheus, 'up{job="cifleet-unknown-ca"}', 0)
    targets = prometheus.targets()
    assert targets["cifleet"]["lastError"] == ""
    assert "HTTP status 401" in targets["cifleet-wrong-token"]["lastError"]
    assert "x509" in targets["cifleet-unknown-ca"]["lastError"]


def test_a_pipeline_run_is_counted(fleet):
    primary, _, prometheus = fleet
    primary.pipeline(
        "name: hello\ntags: [metrics]\njobs:\n  - name: greet\n    steps: ['echo hello']\n"
    )
    run = primary.wait_run(primary.trigger("hello"))
    assert run["state"] == "success", run
    eventually(prometheus, 'cifleet_runs_finished_total{pipeline="hello",state="success"}', 1)
    eventually(prometheus, 'cifleet_runs_finished_total{pipeline="hello",state="failed"}', 0)
    eventually(prometheus, 'cifleet_dispatch_latency_seconds_count{job="cifleet"}', 1)
    eventually(prometheus, 'cifleet_run_duration_seconds_count{job="cifleet"}', 1)
    eventually(prometheus, 'cifleet_agent_runs_ended_total{outcome="delivered"}', 1)
    wait_for(
        lambda: (prometheus.value("cifleet_log_bytes_received_total") or 0) >= len("hello\n"),
        30,
        "the job's output to be counted",
    )
    # The dispatch took less than a minute: the observation is in the 60 s bucket.
    eventually(prometheus, 'cifleet_dispatch_latency_seconds_bucket{le="60.0"}', 1)
    assert prometheus.value('cifleet_store_transaction_seconds_count{outcome="commit"}') > 0


def test_workers_slots_and_the_queue(fleet):
    primary, _, prometheus = fleet
    eventually(prometheus, 'cifleet_workers{state="active"}', 1)
    eventually(prometheus, 'cifleet_worker_slots{worker="m1"}', 2)
    eventually(prometheus, 'cifleet_worker_state{worker="m1",state="active"}', 1)
    eventually(prometheus, "cifleet_agent_slots", 2)
    # The idle agent waits in a held poll.
    eventually(prometheus, 'cifleet_polls_held{job="cifleet"}', 1)
    primary.pipeline("name: nowhere\ntags: [gpu]\njobs:\n  - name: a\n    steps: ['true']\n")
    run_id = primary.trigger("nowhere")
    try:
        eventually(prometheus, 'cifleet_queue_runs{reason="no_matching_worker"}', 1)
        wait_for(
            lambda: (
                (
                    prometheus.value(
                        'cifleet_queue_oldest_age_seconds{reason="no_matching_worker"}'
                    )
                    or 0
                )
                > 0
            ),
            30,
            "the queued run's age",
        )
    finally:
        primary.client.json("POST", f"/api/v1/runs/{run_id}/cancel")
    eventually(prometheus, 'cifleet_queue_runs{reason="no_matching_worker"}', 0)


def test_readyz_with_both_listeners_up(fleet):
    primary, _, _ = fleet
    status, _, body = primary.client.request("GET", "/readyz")
    assert status == 200
    assert json.loads(body) == {
        "status": "ready",
        "checks": {"store": "ok", "listeners": {"agent": "up", "public": "up"}, "stopping": False},
    }


def _dashboard_queries() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def _with_variables(expr: str) -> str:
    """A panel's query as Grafana sends it, its variables filled in."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace('=~"$job"', '=~"cifleet"')
        .replace('=~"$agent_job"', '=~"cifleet-agent"')
    )


def test_every_dashboard_query_runs_and_names_scraped_metrics(fleet):
    _, _, prometheus = fleet
    eventually(prometheus, 'up{job="cifleet"}', 1)
    scraped = set(prometheus.api("label/__name__/values"))
    queries = _dashboard_queries()
    assert len(queries) > 20
    for expr in queries:
        prometheus.query(_with_variables(expr))  # a query Prometheus cannot parse fails here
        names = set(re.findall(r"\b((?:cifleet|process)_[a-z_]+)\b", expr))
        assert names and names <= scraped, (expr, names - scraped)


def test_operations_md_documents_every_metric_scraped(fleet):
    _, _, prometheus = fleet
    eventually(prometheus, 'up{job="cifleet-agent"}', 1)
    # The first column of the metric tables.
    text = (DOCS / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(cifleet_[a-z_]+)`", text, re.MULTILINE))
    scraped = set()
    for name in prometheus.api("label/__name__/values"):
        if name.startswith("cifleet_"):
            scraped.add(re.sub(r"_(bucket|count|sum)$", "", name))
    assert scraped - documented == set(), "scraped, not documented"
    assert documented - scraped == set(), "documented, not scraped"
