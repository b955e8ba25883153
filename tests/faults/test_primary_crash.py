"""The primary killed (kill -9) while 20 runs are queued, assigned or running on several
agents, then started again on the same data dir: every run reaches one final state, none
runs twice at once, and every log is byte-exact."""

import signal
import time
from collections import Counter

import pytest
from fault_fleet import HEARTBEAT, assert_never_twice_at_once, event, executions, read_events
from fleet import wait_for

pytestmark = pytest.mark.faults

RUNS = 20
LINES = 20


def expected_log(run_id: int) -> bytes:
    return b"".join(f"run {run_id} line {i}\n".encode() for i in range(1, LINES + 1))


def test_a_primary_crash_loses_nothing_and_runs_nothing_twice(serve, fleet_of):
    primary = serve()
    fleet = fleet_of(primary)
    for name in ("pc-a", "pc-b", "pc-c", "pc-d"):
        fleet.add(name, slots=2)
    events_file = fleet.root / "events.txt"
    # About two seconds of numbered output per run, bracketed by start and end events.
    step = (
        f"{event(events_file, 'start')}; i=1; while [ $i -le {LINES} ]; do "
        f'echo "run $CIFLEET_RUN_ID line $i"; i=$((i+1)); sleep 0.1; done; '
        f"{event(events_file, 'end')}"
    )
    # One pipeline per run: runs of one pipeline would queue for its single workspace.
    for i in range(RUNS):
        primary.pipeline(f"name: steady-{i:02}\njobs:\n  - name: work\n    steps: ['{step}']\n")
    ids = [primary.trigger(f"steady-{i:02}") for i in range(RUNS)]

    def states() -> Counter:
        return Counter(primary.run(r)["state"] for r in ids)

    wait_for(
        lambda: (c := states())["running"] >= 4 and c["queued"] >= 4,
        60,
        "runs both running and queued",
    )
    at_crash = states()
    primary.stop(signal.SIGKILL)
    down_at = time.monotonic()
    ended = sum(e.kind == "end" for e in read_events(events_file))
    # Down longer than the heartbeat timeout, so every lease has run out by the restart, and
    # agents have backed off: they must be heard again before the restart's grace is over.
    wait_for(
        lambda: (
            time.monotonic() - down_at > 1.5 * HEARTBEAT
            and sum(e.kind == "end" for e in read_events(events_file)) > ended
        ),
        60,
        "jobs to finish while the primary is down",
    )
    primary.start()

    runs = [primary.wait_run(r, timeout=120) for r in ids]
    problems = [
        (r["id"], r["state"], [(a["worker_name"], a["outcome"]) for a in r["attempts"]])
        for r in runs
        if r["state"] != "success" or [a["outcome"] for a in r["attempts"]] != ["success"]
    ]
    assert not problems, f"runs not done in one attempt (states at the crash: {at_crash})"
    for run_id in ids:
        assert primary.job_log(run_id, "work") == expected_log(run_id), f"run {run_id}"
        _, _, whole = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
        assert whole.count(b"\n=== run ") == 1 and whole.endswith(
            f"=== run {run_id}: success\n".encode()
        ), f"run {run_id}: {whole[-300:]!r}"

    by_run = executions(read_events(events_file))
    assert sorted(by_run) == sorted(ids)
    twice = {r: x for r, x in by_run.items() if len(x) != 1 or x[0].end is None}
    assert not twice, f"runs not executed exactly once: {twice}"
    assert_never_twice_at_once(by_run)
