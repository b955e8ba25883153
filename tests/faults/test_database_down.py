"""PostgreSQL goes down under a primary for longer than the heartbeat timeout, mid-run:
every call that needs it is refused with 503 storage_unavailable (none is a 500), the agent
keeps its job running and its output spooled, and once the database is back nothing is
lost, nothing runs twice, and the log is byte-exact. The server is this module's own, so
stopping it disturbs no other test."""

import json
import time

import pytest
from fault_fleet import HEARTBEAT
from fleet import wait_for
from pgcluster import PgCluster

from primary.cli.client import AdminClient

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def own_cluster():
    with PgCluster.running() as cluster:
        yield cluster


@pytest.fixture
def store_url(own_cluster) -> str:
    """The primaries of this module keep their fleet in the module's own server."""
    return own_cluster.create_database()


def seq(first: int, last: int) -> bytes:
    return b"".join(f"{i}\n".encode() for i in range(first, last + 1))


def test_a_database_outage_longer_than_the_heartbeat_loses_nothing(serve, fleet_of, own_cluster):
    primary = serve()
    fleet = fleet_of(primary)
    fleet.add("keeper")
    gate = fleet.root / "gate"
    gate.mkdir()
    wait = "while [ ! -e {} ]; do sleep 0.05; done"
    step = f"seq 1 500; {wait.format(gate / 'go')}; seq 501 5000; {wait.format(gate / 'end')}"
    primary.pipeline(f"name: during\njobs:\n  - name: w\n    steps: ['{step}']\n")
    run_id = primary.trigger("during")
    wait_for(lambda: primary.job_log(run_id, "w") == seq(1, 500), 30, "the first 500 lines")

    own_cluster.stop("immediate")  # as if it crashed: no goodbye to the primary's connections
    stopped = time.monotonic()
    (gate / "go").touch()  # the job writes the rest now, with nowhere to store it
    wait_for(
        lambda: f"run {run_id}: the primary answered HTTP 503; retrying" in fleet.log("keeper"),
        30,
        "the agent to be told 503 and keep the output",
    )
    for method, path in (("POST", "/api/v1/pipelines/during/runs"), ("GET", "/api/v1/runs")):
        status, _, body = primary.client.request(method, path)
        assert (status, json.loads(body)["code"]) == (503, "storage_unavailable"), body
    assert primary.client.request("GET", "/healthz")[0] == 200
    # Probes and scrapes answer for the outage: not ready, and the store reported down (the
    # scrape's token is taken at the role it had before: the store cannot say now).
    status, _, body = primary.client.request("GET", "/readyz")
    assert (status, json.loads(body)["checks"]["store"]) == (503, "unreachable"), body
    status, _, body = primary.client.request("GET", "/metrics")
    assert status == 200, body
    assert "\ncifleet_store_up 0.0\n" in body.decode(), body
    assert "\ncifleet_workers{" not in body.decode()
    stranger = AdminClient(primary.url, primary.ca_file, "cft_never-issued")
    status, _, body = stranger.request("GET", "/metrics")
    assert (status, json.loads(body)["code"]) == (503, "storage_unavailable"), body
    stranger.close()
    # Down for longer than the heartbeat timeout: the run's lease runs out meanwhile.
    wait_for(lambda: time.monotonic() - stopped > 1.5 * HEARTBEAT, 4 * HEARTBEAT, "the outage")

    own_cluster.start()
    wait_for(
        lambda: (
            f"the store takes writes again; 1 lease(s) now run {HEARTBEAT} s"
            in primary.log_path.read_text()
        ),
        30,
        "the lease sweeper to extend the lease",
    )
    (gate / "end").touch()
    run = primary.wait_run(run_id, timeout=60)
    assert run["state"] == "success", run
    assert [(a["worker_name"], a["outcome"]) for a in run["attempts"]] == [("keeper", "success")]
    assert primary.job_log(run_id, "w") == seq(1, 5000)
    assert primary.client.json("GET", "/api/v1/runs?state=queued")["runs"] == []
    said = primary.log_path.read_text()
    assert "unhandled error" not in said, said
    # The primary's log says what failed, once every few seconds rather than per call.
    failures = [line for line in said.splitlines() if "failed: connection" in line]
    assert failures and "No such file or directory" in failures[0], said
    assert "more failures since the last line)" in said, failures
