"""A network cut between one agent and the primary. The proxy blackholes the traffic (holds
it, closes nothing): the agent sees no error, only silence, and what it sent arrives late,
after the heal. The agent fences: without contact for half the heartbeat timeout it stops
its jobs, before the primary can run them anywhere else (agent/fence.py)."""

import time

import pytest
from fault_fleet import (
    HEARTBEAT,
    executions,
    lines,
    pipeline,
    read_events,
    shipped_lines,
    wait_lost_then_done,
)
from fleet import AgentPeer, job_processes, point_agent_at, wait_for

pytestmark = pytest.mark.faults

FENCE_LINE = "no contact with the primary for"


def cut_off_fleet(serve, fleet_of, proxy_to, *serve_flags: str):
    """A primary, the agent "cut-off" behind a proxy, and "steady" (locked)."""
    primary = serve(*serve_flags)
    fleet = fleet_of(primary)
    proxy = proxy_to(primary.agent_port)
    cut_off = fleet.add("cut-off", start=False)
    point_agent_at(cut_off, proxy.port)
    fleet.start(cut_off)
    fleet.add("steady")
    primary.client.json("POST", "/api/v1/workers/steady/lock")
    return primary, fleet, proxy, cut_off


def start_on_cut_off(primary, fleet, name: str) -> int:
    """Attempt 1 of the long pipeline `name` runs on "cut-off" and has shipped five lines;
    each of its lines is a "tick" event in fleet.root / events.txt."""
    primary.pipeline(pipeline(name, fleet.root / "events.txt"))
    run_id = primary.trigger(name)
    wait_for(lambda: shipped_lines(primary, run_id) >= 5, 30, "attempt 1 to ship 5 lines")
    return run_id


def assert_stopped_before_rerun(fleet, run_id: int) -> None:
    """Attempt 1's last line came before attempt 2 started, and attempt 2 ran to its end."""
    events = read_events(fleet.root / "events.txt")
    first = [e.ns for e in events if (e.run, e.attempt, e.kind) == (run_id, 1, "tick")]
    runs = executions(events)[run_id]
    assert [(x.attempt, x.worker) for x in runs] == [(1, "cut-off"), (2, "steady")]
    assert runs[0].end is None, "attempt 1 was stopped, not finished"
    assert runs[1].end is not None
    assert first and max(first) < runs[1].start, "attempt 1 still ran when attempt 2 started"


def assert_lost_log_kept(primary, fleet, cut_off, run_id: int, lost_size: int) -> None:
    """The lost attempt's partial log is readable on the primary, and the agent kept its
    spooled output (at least what the primary has)."""
    status, headers, partial = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/work/log"
    )
    assert (status, headers["x-attempt-outcome"]) == (200, "lost")
    assert len(partial) == lost_size and lines(1, 3000).startswith(partial)
    spooled = (cut_off.home / "spool" / f"{run_id}-1" / "work.log").read_bytes()
    assert spooled.startswith(partial) and lines(1, 3000).startswith(spooled)
    assert f"run {run_id} attempt 1: undelivered output left in" in fleet.log("cut-off")


def test_a_cut_off_worker_stops_its_job_before_the_run_goes_elsewhere(serve, fleet_of, proxy_to):
    primary, fleet, proxy, cut_off = cut_off_fleet(serve, fleet_of, proxy_to)
    run_id = start_on_cut_off(primary, fleet, "partitioned")
    primary.client.json("POST", "/api/v1/workers/steady/unlock")

    proxy.cut()
    cut_at = time.monotonic()
    # Half a heartbeat timeout without contact: the agent stops the job on its own.
    wait_for(lambda: FENCE_LINE in fleet.log("cut-off"), 3 * HEARTBEAT, "the agent to fence")
    wait_for(
        lambda: not job_processes(cut_off.home, run_id, attempt=1), HEARTBEAT, "the job to end"
    )
    wait_for(
        lambda: primary.worker("cut-off")["state"] == "inactive",
        3 * HEARTBEAT,
        "the cut-off worker to turn inactive",
    )
    run = wait_lost_then_done(primary, run_id, lost_on="cut-off", done_on="steady")
    assert "stopped answering" in run["attempts"][0]["reason"]
    assert_stopped_before_rerun(fleet, run_id)
    lost_size = run["attempts"][0]["log_sizes"]["work"]

    wait_for(lambda: time.monotonic() - cut_at >= 2 * HEARTBEAT, 3 * HEARTBEAT, "the cut")
    proxy.heal()
    fleet.wait_active("cut-off")
    assert_lost_log_kept(primary, fleet, cut_off, run_id, lost_size)
    # The agent's late report that it stopped the attempt changes nothing: it was lost.
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


def test_after_a_short_cut_the_agent_reports_the_stopped_run_lost(serve, fleet_of, proxy_to):
    """A cut longer than the fence but healed before the lease expires: the agent tells the
    primary it stopped the run, which re-queues it then and there."""
    heartbeat = 4 * HEARTBEAT  # room between the fence (H/2) and the lease's end (H)
    primary, fleet, proxy, cut_off = cut_off_fleet(
        serve, fleet_of, proxy_to, "--heartbeat-timeout", str(heartbeat)
    )
    run_id = start_on_cut_off(primary, fleet, "short-cut")
    primary.client.json("POST", "/api/v1/workers/steady/unlock")

    proxy.cut()
    cut_at = time.monotonic()
    stopped = f"run {run_id} attempt 1: stopped for lack of contact"
    wait_for(lambda: stopped in fleet.log("cut-off"), heartbeat, "the agent to stop the run")
    assert not job_processes(cut_off.home, run_id, attempt=1)
    # Attempt 2 goes to "steady", not back to its home "cut-off" once that is heard again.
    primary.client.json("POST", "/api/v1/workers/cut-off/lock")
    assert primary.run(run_id)["state"] == "running", "the lease has not expired yet"
    proxy.heal()
    healed_after = time.monotonic() - cut_at
    assert healed_after < heartbeat, "the test was too slow to heal before the lease expired"

    run = wait_lost_then_done(primary, run_id, lost_on="cut-off", done_on="steady")
    reason = run["attempts"][0]["reason"]
    assert "cut-off lost contact with the primary and stopped the job" in reason, reason
    assert_stopped_before_rerun(fleet, run_id)
    assert_lost_log_kept(primary, fleet, cut_off, run_id, run["attempts"][0]["log_sizes"]["work"])
    primary.client.json("POST", "/api/v1/workers/cut-off/unlock")
    fleet.wait_active("cut-off")
