"""A network cut between one agent and the primary, for twice the heartbeat timeout. The
proxy blackholes the traffic (holds it, closes nothing): the agent sees no error, only
silence, and what it sent arrives late, after the heal."""

import time

import pytest
from fault_fleet import HEARTBEAT, lines, start_long_run, wait_lost_then_done
from fleet import AgentPeer, job_processes, point_agent_at, wait_for

pytestmark = pytest.mark.faults


def test_a_cut_off_worker_is_replaced_and_its_late_writes_are_refused(serve, fleet_of, proxy_to):
    primary = serve()
    fleet = fleet_of(primary)
    proxy = proxy_to(primary.agent_port)
    cut_off = fleet.add("cut-off", start=False)
    point_agent_at(cut_off, proxy.port)
    fleet.start(cut_off)
    fleet.add("steady")
    run_id = start_long_run(primary, "partitioned", spare="steady")
    primary.client.json("POST", "/api/v1/workers/steady/unlock")

    proxy.cut()
    cut_at = time.monotonic()
    wait_for(
        lambda: primary.worker("cut-off")["state"] == "inactive",
        3 * HEARTBEAT,
        "the cut-off worker to turn inactive",
    )
    run = wait_lost_then_done(primary, run_id, lost_on="cut-off", done_on="steady")
    lost_size = run["attempts"][0]["log_sizes"]["work"]
    # Behind the cut attempt 1 runs on: the agent cannot tell a dead primary from a cut.
    assert job_processes(cut_off.home, run_id, attempt=1)

    wait_for(lambda: time.monotonic() - cut_at >= 2 * HEARTBEAT, 3 * HEARTBEAT, "the cut")
    proxy.heal()
    fleet.wait_active("cut-off")
    # The late writes meet 409 stale_attempt: the agent ends the job, drops the run, and
    # nothing it sent after the loss was stored.
    wait_for(
        lambda: not job_processes(cut_off.home, run_id, attempt=1), 60, "the stale attempt to end"
    )
    wait_for(
        lambda: (
            f"run {run_id} attempt 1 was taken back by the primary; dropping it"
            in fleet.log("cut-off")
        ),
        30,
        "the agent to drop the stale run",
    )
    status, headers, partial = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/work/log"
    )
    assert (status, headers["x-attempt-outcome"]) == (200, "lost")
    assert len(partial) == lost_size and lines(1, 3000).startswith(partial)
    assert primary.run(run_id)["attempts"] == run["attempts"]

    # A late write of that attempt, sent by hand with the worker's own certificate.
    peer = AgentPeer.of_home(primary, cut_off.home)
    late_log = f"/agent/v1/runs/{run_id}/jobs/work/log?attempt=1&offset={lost_size}"
    assert peer.call("POST", late_log, b"late\n") == (
        409,
        {"error": f"run {run_id} attempt 1 is no longer current", "code": "stale_attempt"},
    )
    final = {"attempt": 1, "state": "success", "exit_code": 0, "log_size": lost_size}
    status, body = peer.call("POST", f"/agent/v1/runs/{run_id}/jobs/work/status", final)
    assert (status, body["code"]) == (409, "stale_attempt")

    # Back to polling: the worker takes new work.
    primary.client.json("POST", "/api/v1/workers/steady/lock")
    primary.pipeline("name: after-cut\njobs:\n  - name: w\n    steps: ['echo healed']\n")
    after = primary.wait_run(primary.trigger("after-cut"), timeout=60)
    assert (after["state"], after["worker_name"]) == ("success", "cut-off")
    assert primary.job_log(after["id"], "w") == b"healed\n"
