"""The primary killed (kill -9) while 20 runs are queued, assigned or running on several
agents, then started again on the same data dir: every run reaches one final state, none
runs twice at once, and every log is byte-exact.

Agents cannot tell a dead primary from a cut network: down for less than the fence (half
the heartbeat timeout, agent/fence.py) the primary loses nothing and every run finishes in
one attempt; down for longer, the agents stop their running jobs, and those runs run again
from the start once the primary is back, never beside their stopped attempt."""

import signal
import time
from collections import Counter

import pytest
from fault_fleet import HEARTBEAT, assert_never_twice_at_once, event, executions, read_events
from fleet import wait_for
from pgcluster import both_engines

pytestmark = pytest.mark.faults

RUNS = 20
FENCE_LINE = "no contact with the primary for"


def expected_log(run_id: int, lines: int) -> bytes:
    return b"".join(f"run {run_id} line {i}\n".encode() for i in range(1, lines + 1))


def crash_fleet(serve, fleet_of, heartbeat: float, lines: int):
    """A primary with `heartbeat`, four agents of two slots, and RUNS runs triggered, each
    writing `lines` numbered lines, one every 0.1 s, bracketed by start and end events (and
    a term event when SIGTERM stops it)."""
    primary = serve("--heartbeat-timeout", str(heartbeat))
    fleet = fleet_of(primary)
    for name in ("pc-a", "pc-b", "pc-c", "pc-d"):
        fleet.add(name, slots=2)
    events_file = fleet.root / "events.txt"
    step = (
        f"trap '{event(events_file, 'term')}; exit 143' TERM\n"
        f"{event(events_file, 'start')}\n"
        f"i=1; while [ $i -le {lines} ]; do "
        f'echo "run $CIFLEET_RUN_ID line $i"; i=$((i+1)); sleep 0.1; done\n'
        f"{event(events_file, 'end')}\n"
    )
    body = "".join(f"        {line}\n" for line in step.splitlines())
    # One pipeline per run: runs of one pipeline would queue for its single workspace.
    for i in range(RUNS):
        primary.pipeline(
            f"name: steady-{i:02}\njobs:\n  - name: work\n    steps:\n      - |\n{body}"
        )
    ids = [primary.trigger(f"steady-{i:02}") for i in range(RUNS)]
    return primary, fleet, events_file, ids


def crash_when_busy(primary, ids: list[int]) -> Counter:
    """kill -9 the primary once runs are both running and queued; their states then."""

    def states() -> Counter:
        return Counter(primary.run(r)["state"] for r in ids)

    wait_for(
        lambda: (c := states())["running"] >= 4 and c["queued"] >= 4,
        60,
        "runs both running and queued",
    )
    at_crash = states()
    primary.stop(signal.SIGKILL)
    return at_crash


@both_engines
def test_a_primary_crash_shorter_than_the_fence_loses_nothing(serve, fleet_of):
    # A heartbeat timeout long enough that the outage, restart included, stays well within
    # the fence (half of it): no agent stops a job.
    heartbeat, lines = 4 * HEARTBEAT, 20
    primary, fleet, events_file, ids = crash_fleet(serve, fleet_of, heartbeat, lines)

    at_crash = crash_when_busy(primary, ids)
    down_at = time.monotonic()
    ended = sum(e.kind == "end" for e in read_events(events_file))
    # Jobs finish while the primary is down: their reports wait for it.
    wait_for(
        lambda: sum(e.kind == "end" for e in read_events(events_file)) > ended,
        60,
        "jobs to finish while the primary is down",
    )
    primary.start()
    assert time.monotonic() - down_at < heartbeat / 2, "the test was slower than the fence"

    runs = [primary.wait_run(r, timeout=120) for r in ids]
    problems = [
        (r["id"], r["state"], [(a["worker_name"], a["outcome"]) for a in r["attempts"]])
        for r in runs
        if r["state"] != "success" or [a["outcome"] for a in r["attempts"]] != ["success"]
    ]
    assert not problems, f"runs not done in one attempt (states at the crash: {at_crash})"
    for run_id in ids:
        assert primary.job_log(run_id, "work") == expected_log(run_id, lines), f"run {run_id}"
        _, _, whole = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
        assert whole.count(b"\n=== run ") == 1 and whole.endswith(
            f"=== run {run_id}: success\n".encode()
        ), f"run {run_id}: {whole[-300:]!r}"

    by_run = executions(read_events(events_file))
    assert sorted(by_run) == sorted(ids)
    twice = {r: x for r, x in by_run.items() if len(x) != 1 or x[0].end is None}
    assert not twice, f"runs not executed exactly once: {twice}"
    assert_never_twice_at_once(by_run)
    assert not any(FENCE_LINE in fleet.log(name) for name in fleet.agents)


# SQLite only: what this adds to the test above is the agents' fencing, which does not
# depend on the store (the fleet in PostgreSQL has its own outage test: test_database_down).
def test_a_primary_down_longer_than_the_fence_has_its_running_jobs_stopped(serve, fleet_of):
    # Jobs of six seconds: the ones running at the crash outlive the fence (3 s).
    lines = 60
    primary, fleet, events_file, ids = crash_fleet(serve, fleet_of, HEARTBEAT, lines)

    crash_when_busy(primary, ids)
    down_at = time.monotonic()
    # Down longer than the heartbeat timeout: every lease has run out by the restart, and
    # every running job was stopped by its agent before that.
    wait_for(
        lambda: (
            time.monotonic() - down_at > 1.5 * HEARTBEAT
            and sum(e.kind == "term" for e in read_events(events_file)) >= 4
        ),
        60,
        "the agents to stop their running jobs",
    )
    assert sum(FENCE_LINE in fleet.log(name) for name in fleet.agents) >= 2
    primary.start()

    runs = [primary.wait_run(r, timeout=180) for r in ids]
    assert [r["state"] for r in runs] == ["success"] * RUNS
    stopped = [r for r in runs if any(a["outcome"] == "lost" for a in r["attempts"])]
    assert len(stopped) >= 4
    for run in runs:
        run_id = run["id"]
        *before, last = [a["outcome"] for a in run["attempts"]]
        assert last == "success" and set(before) <= {"lost", "taken back"}, run["attempts"]
        # The finished attempt's log byte-exact; a stopped one's a part of the same lines.
        assert primary.job_log(run_id, "work") == expected_log(run_id, lines), f"run {run_id}"
        for a in run["attempts"][:-1]:
            status, _, partial = primary.client.request(
                "GET", f"/api/v1/runs/{run_id}/attempts/{a['attempt']}/jobs/work/log"
            )
            assert status == 200 and expected_log(run_id, lines).startswith(partial)
        _, _, whole = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
        assert whole.endswith(f"=== run {run_id}: success\n".encode()), whole[-300:]

    by_run = executions(read_events(events_file))
    assert sorted(by_run) == sorted(ids)
    for run in runs:
        done = by_run[run["id"]]
        # One execution per attempt that started its job (an attempt taken back before
        # it started has none); each ended, by its end or by its term event.
        attempts = [a["attempt"] for a in run["attempts"]]
        assert {x.attempt for x in done} <= set(attempts) and done[-1].attempt == attempts[-1]
        assert all(x.end is not None for x in done), done
    assert_never_twice_at_once(by_run)
