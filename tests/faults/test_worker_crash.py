"""Worker crashes: a host that dies while its run's job writes output, and an agent process
killed alone on a host that lives on (its jobs keep running until the agent is back)."""

import os
import re
import signal
import subprocess

import pytest
from fault_fleet import (
    HEARTBEAT,
    executions,
    lines,
    pipeline,
    read_events,
    shipped_lines,
    start_long_run,
    wait_lost_then_done,
)
from fleet import BIN, job_processes, kill_host, wait_for
from pgcluster import both_engines

pytestmark = [pytest.mark.faults, both_engines]


def test_a_host_crash_loses_the_attempt_and_the_run_finishes_elsewhere(serve, fleet_of):
    primary = serve()
    fleet = fleet_of(primary)
    doomed = fleet.add("doomed")
    fleet.add("survivor")
    run_id = start_long_run(primary, "crashy", spare="survivor")
    _, _, log_before = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    primary.client.json("POST", "/api/v1/workers/survivor/unlock")

    kill_host(doomed)  # the agent and its job die together, mid-output
    assert not job_processes(fleet.root, run_id), "a dead host runs nothing"

    run = wait_lost_then_done(primary, run_id, lost_on="doomed", done_on="survivor")

    # The lost attempt's partial log: readable, byte-exact as far as it was shipped, final.
    status, headers, partial = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/work/log"
    )
    assert status == 200, partial
    assert headers["x-attempt-outcome"] == "lost"
    assert headers["x-log-complete"] == "true"
    assert int(headers["x-log-size"]) == len(partial) == run["attempts"][0]["log_sizes"]["work"]
    assert partial.count(b"\n") >= 5
    assert lines(1, 3000).startswith(partial), partial[-200:]
    status, headers, current = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/2/jobs/work/log"
    )
    assert (status, headers["x-attempt-outcome"], current) == (200, "success", lines(2, 5))

    # The run log keeps attempt 1 as it was shown (it only grew), marks how it ended, and
    # has one final state.
    _, _, whole = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert whole.startswith(log_before)
    lost_line = (
        f"=== attempt 1 on doomed: lost (doomed stopped answering (no contact for {HEARTBEAT} s)"
        "; re-queued (retry 1 of 1))\n"
    ).encode()
    first, second = whole.split(lost_line)
    assert first.endswith(b"=== job work\n" + partial + (b"" if partial.endswith(b"\n") else b"\n"))
    assert second.startswith(b"=== Prepare environment (attempt 2)\n")
    assert second.endswith(
        b"=== job work\n"
        + lines(2, 5)
        + f"=== job work: success, exit code 0\n=== run {run_id}: success\n".encode()
    )
    assert whole.count(b"\n=== run ") == 1


def test_a_killed_agent_ends_its_orphaned_jobs_when_it_restarts(serve, fleet_of):
    """kill -9 of the agent alone: its job runs on, unsupervised. The agent started again
    on that home ends it before it polls, and the primary, seeing a new agent process,
    re-queues the run at once rather than after the heartbeat timeout."""
    primary = serve()
    fleet = fleet_of(primary)
    crashy = fleet.add("crashy")
    events_file = fleet.root / "events.txt"
    primary.pipeline(pipeline("orphaned", events_file))
    run_id = primary.trigger("orphaned")
    wait_for(lambda: shipped_lines(primary, run_id) >= 5, 30, "attempt 1 to ship 5 lines")

    os.kill(crashy.proc.pid, signal.SIGKILL)
    crashy.proc.wait(10)
    orphans = job_processes(crashy.home, run_id, attempt=1)
    assert orphans, "the job outlives its agent"
    ticks = len(read_events(events_file))
    wait_for(lambda: len(read_events(events_file)) > ticks + 3, 10, "the orphan to keep going")

    fleet.start(crashy)  # the same home
    run = primary.wait_run(run_id, timeout=60)
    assert run["state"] == "success", run
    assert [(a["worker_name"], a["outcome"]) for a in run["attempts"]] == [
        ("crashy", "lost"),
        ("crashy", "success"),
    ]
    assert run["attempts"][0]["reason"].startswith(
        "lost: the agent on crashy restarted; its jobs ended with the old agent process"
    ), run["attempts"][0]["reason"]
    assert primary.job_log(run_id, "work") == lines(2, 5)
    assert not job_processes(fleet.root, run_id, attempt=1), "the orphaned job was ended"
    assert re.search(
        r"ended \d+ process\(es\) of jobs an earlier agent process left running: [\d ]+\n",
        fleet.log("crashy"),
    )

    # Attempt 1 ticked until it was ended, and attempt 2 started after that: never both.
    events = read_events(events_file)
    last_tick_1 = max(e.ns for e in events if e.attempt == 1)
    by_run = executions(events)
    assert [(x.attempt, x.end is not None) for x in by_run[run_id]] == [(1, False), (2, True)]
    assert last_tick_1 < by_run[run_id][1].start


def test_a_second_agent_on_the_same_home_refuses_to_start(serve, fleet_of):
    primary = serve()
    fleet = fleet_of(primary)
    first = fleet.add("only-one")
    second = subprocess.run(
        [str(BIN / "cifleet-agent"), "run", "--home", str(first.home)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second
    assert (
        f"another agent (pid {first.proc.pid}) is running with the home {first.home}"
        in second.stderr
    )
    assert first.proc.poll() is None
    assert primary.worker("only-one")["state"] == "active"
