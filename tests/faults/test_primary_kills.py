"""Three primaries on one PostgreSQL, ten agents, a stream of runs, and one primary killed
with SIGKILL every few seconds (seeded) and started again once every agent was heard
through the others for longer than the fence would allow without contact. Every run ends
in exactly one final state (success, in its first attempt: none was lost, taken back or
fenced), none ran on two workers at once, every log is byte-exact, and no agent stopped a
job for lack of contact.

The suite runs a short version (40 runs, a kill after every 10 triggered, while jobs run);
the issue's full size (300 runs, a kill every ~10 s) runs with CIFLEET_PRIMARY_KILLS_FULL=1:

    CIFLEET_PRIMARY_KILLS_FULL=1 .venv/bin/python -m pytest -q -m faults \\
        tests/faults/test_primary_kills.py
"""

import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fault_fleet import event, executions, read_events
from fleet import BIN, Agent, Primary, register_agent, stop_agents, wait_for

pytestmark = pytest.mark.faults

FULL = os.environ.get("CIFLEET_PRIMARY_KILLS_FULL") == "1"
RUNS = 300 if FULL else 40
KILL_EVERY = 10.0  # seconds (the full size), jittered by a quarter either way
KILL_AFTER_RUNS = 10  # the short one: a kill after every 10 runs triggered
AGENTS = 10
SEED = 16
# An agent fences after half of it without contact; a killed primary stays down longer.
HEARTBEAT = 10
LINES = 3000


def init(data_dir, *args: str) -> None:
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


def count_runs(pg_cluster, pg_url: str) -> tuple[int, int]:
    """Runs running now, and runs not finished."""
    [(running, unfinished)] = pg_cluster.sql(
        pg_url,
        "SELECT count(*) FILTER (WHERE state = 'running'), count(*) FILTER (WHERE state NOT IN"
        " ('success', 'failed', 'cancelled', 'lost', 'timed_out')) FROM runs",
    )
    return running, unfinished


def contacts(pg_cluster, pg_url: str) -> list[float]:
    return [c or 0.0 for (c,) in pg_cluster.sql(pg_url, "SELECT last_contact FROM workers")]


def expected_log(run_id: int) -> bytes:
    numbers = b"".join(b"%d\n" % i for i in range(1, LINES + 1))
    return numbers + b"run %d done\n" % run_id


@pytest.fixture
def fleet(tmp_path, pg_url):
    names = ["p1", "p2", "p3"]
    init(tmp_path / names[0], "--store", pg_url)
    for name in names[1:]:
        key = str(tmp_path / names[0] / "vault.key")
        init(tmp_path / name, "--store", pg_url, "--vault-key-file", key, "--name", name)
    primaries = [
        Primary(
            data_dir=tmp_path / name,
            serve_args=["--heartbeat-timeout", str(HEARTBEAT), "--primary-worker-slots", "0"],
            log_path=tmp_path / f"{name}.log",
        )
        for name in names
    ]
    agents: list[Agent] = []
    try:
        for p in primaries:
            p.start()

        def register(i: int) -> Agent:
            via = primaries[i % len(primaries)]  # registered through each, in turn
            name = f"a{i}"
            assert register_agent(via, tmp_path, name).returncode == 0
            return Agent(name=name, home=tmp_path / name, log_path=tmp_path / f"{name}.log")

        with ThreadPoolExecutor(4) as pool:
            agents += pool.map(register, range(AGENTS))
        for agent in agents:
            agent.start()
        yield primaries, agents
    finally:
        stop_agents(agents)  # all at once: each drains (it has nothing left to run)
        for p in primaries:
            p.close()


def test_a_primary_killed_again_and_again_stops_no_job(fleet, tmp_path, pg_cluster, pg_url):
    primaries, agents = fleet
    rand = random.Random(SEED)
    urls = {f"https://127.0.0.1:{p.agent_port}" for p in primaries}
    # Each agent knows every primary before the first kill.
    wait_for(
        lambda: all(urls <= {a.config()["agent_url"], *a.config().get("agent_urls", [])}
                    for a in agents),
        60,
        "every agent to learn of every primary",
    )  # fmt: skip
    events = tmp_path / "events.txt"
    step = (
        f"{event(events, 'start')}; seq 1 {LINES}; sleep 0.3; "
        f'echo "run $CIFLEET_RUN_ID done"; {event(events, "end")}'
    )
    primaries[0].pipeline(f"name: burst\njobs:\n  - name: w\n    steps: ['{step}']\n")

    triggered = kills = 0
    next_kill = time.monotonic() + KILL_EVERY * rand.uniform(0.75, 1.25)
    deadline = time.monotonic() + 600
    while True:
        if triggered < RUNS:
            # A few at a time, through any primary (all serve while none is being killed).
            for _ in range(min(3, RUNS - triggered)):
                rand.choice(primaries).trigger("burst")
                triggered += 1
        running, unfinished = count_runs(pg_cluster, pg_url)
        if triggered == RUNS and unfinished == 0:
            break
        assert time.monotonic() < deadline, f"{unfinished} runs unfinished after 600 s"
        # The full size kills on the clock; the short one after every KILL_AFTER_RUNS runs
        # triggered, once jobs run, so that every kill hits running jobs however fast the
        # machine is.
        due = (
            time.monotonic() >= next_kill
            if FULL
            else triggered >= (kills + 1) * KILL_AFTER_RUNS and running > 0
        )
        if due:
            victim = rand.choice(primaries)
            victim.stop(signal.SIGKILL)
            killed = time.time()
            kills += 1
            # Down until every agent was heard (through the others) later than it could
            # have gone without contact before fencing: so its agents did move.
            wait_for(
                lambda since=killed: min(contacts(pg_cluster, pg_url)) > since + HEARTBEAT / 2,
                60,
                "every agent to be heard through the other primaries",
            )
            victim.start()  # the same ports: the agents know it still
            next_kill = time.monotonic() + KILL_EVERY * rand.uniform(0.75, 1.25)
        time.sleep(0.2)
    assert kills >= (2 if FULL else RUNS // KILL_AFTER_RUNS - 1), "too few kills to prove much"

    runs = pg_cluster.sql(pg_url, "SELECT id, state, attempt FROM runs ORDER BY id")
    assert len(runs) == RUNS
    # Exactly one final state each, success, at the first attempt: no run was lost, taken
    # back, or stopped by a fence.
    assert [r for r in runs if r[1:] != ("success", 1)] == []
    attempts = pg_cluster.sql(pg_url, "SELECT run_id, attempt, outcome FROM attempts")
    assert sorted(attempts) == [(r[0], 1, "success") for r in runs]
    by_run = executions(read_events(events))
    assert sorted(by_run) == [r[0] for r in runs]
    assert all(len(ex) == 1 and ex[0].end is not None for ex in by_run.values())
    # Byte-exact logs, read through whichever primary.
    for run_id, *_ in runs:
        assert rand.choice(primaries).job_log(run_id, "w") == expected_log(run_id), run_id
    for agent in agents:
        log = agent.log_path.read_text()
        assert "stopping runs" not in log and "undelivered output" not in log, agent.name
