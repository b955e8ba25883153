"""Churn: 20 agents and 500 runs while agents are killed (kill -9: half of the time the
whole host, the agent and its jobs; else the agent alone, its jobs running on) and started
again, at random from a seeded generator, in a bounded loop.

No run is lost, none executes twice at once, and a run no kill hit executes exactly once.
"""

import datetime
import os
import random
import signal
import time

import pytest
from fault_fleet import Kill, assert_never_twice_at_once, event, executions, read_events
from fleet import kill_host, register_agents, wait_for

pytestmark = pytest.mark.faults

AGENTS = 20
SLOTS = 2
RUNS = 500
PIPELINES = 20
SEED = 7
KILLS = 25
BATCH = RUNS // KILLS


def _ns(iso: str) -> int:
    return int(datetime.datetime.fromisoformat(iso).timestamp() * 1e9)


def test_churn_loses_no_run_and_runs_none_twice_at_once(serve, fleet_of):
    # Assignments a killed agent never confirmed come back after 3 s; runs of a pipeline
    # whose home is busy go elsewhere at once.
    primary = serve("--confirm-timeout", "3", "--home-busy-wait", "0")
    fleet = fleet_of(primary)
    names = [f"churn-{i:02}" for i in range(AGENTS)]
    for agent in register_agents(primary, fleet.root, names, slots=SLOTS):
        fleet.agents[agent.name] = agent
        agent.start()
    for name in names:
        fleet.wait_active(name, timeout=60)

    events_file = fleet.root / "events.txt"
    # An orphaned step ended by its restarted agent (SIGTERM) says when it died: "term".
    step = (
        f"term() {{ {event(events_file, 'term')}; exit 143; }}; trap term TERM; "
        f"{event(events_file, 'start')}; sleep 1; {event(events_file, 'end')}"
    )
    for p in range(PIPELINES):
        primary.pipeline(
            f"name: churn-{p:02}\nretries_on_lost: 10\njobs:\n  - name: w\n    steps: ['{step}']\n"
        )

    def unfinished() -> int:
        runs = primary.client.json("GET", "/api/v1/status")["runs"]
        return sum(runs[s] for s in ("queued", "assigned", "running"))

    rng = random.Random(SEED)
    kills: dict[str, list[Kill]] = {}
    restart_at: dict[str, float] = {}
    ids: list[int] = []
    for _ in range(KILLS):  # runs arrive in batches, so the kills meet busy agents
        ids += [primary.trigger(f"churn-{i % PIPELINES:02}") for i in range(BATCH)]
        time.sleep(rng.uniform(0.1, 0.5))  # the chaos schedule, not a wait for anything
        now = time.monotonic()
        for name, at in list(restart_at.items()):
            if at <= now:
                fleet.agents[name].start()
                del restart_at[name]
        victim = fleet.agents[rng.choice(sorted(set(names) - set(restart_at)))]
        host = rng.random() < 0.5
        if host:
            kill_host(victim)  # the agent and its jobs
        else:
            os.kill(victim.proc.pid, signal.SIGKILL)  # the agent alone: its jobs run on
            victim.proc.wait(10)
        kills.setdefault(victim.name, []).append(Kill(time.time_ns(), host))
        if rng.random() < 0.5:
            victim.start()  # at once: it finds its jobs (if it was killed alone) still running
        else:
            restart_at[victim.name] = time.monotonic() + rng.uniform(0.5, 1.5)
    for name in restart_at:
        fleet.agents[name].start()
    wait_for(lambda: not unfinished(), 120, "every run to reach a final state", interval=0.5)

    runs = {r: primary.run(r) for r in ids}
    not_done = {r: (x["state"], x["reason"]) for r, x in runs.items() if x["state"] != "success"}
    assert not not_done, f"runs that did not succeed: {not_done}"
    by_run = executions(read_events(events_file))
    assert_never_twice_at_once(by_run, kills)

    hit = 0
    for run_id, run in runs.items():
        attempts = {a["attempt"]: a for a in run["attempts"]}
        done = by_run.get(run_id, [])
        assert done and done[-1].end is not None, f"run {run_id}: no complete execution: {done}"
        for ex in done:
            worker = attempts[ex.attempt]["worker_name"]
            assert ex.worker == worker, f"run {run_id} attempt {ex.attempt} ran on {ex.worker}"
        lost = [a for a in run["attempts"] if a["outcome"] == "lost"]
        if not lost:
            assert len(done) == 1, f"run {run_id}, hit by no kill, executed {len(done)} times"
            continue
        hit += 1
        for a in lost:  # lost only to a kill of its worker while it held the run
            held = (_ns(a["assigned_at"]), _ns(a["ended_at"]))
            assert any(held[0] <= k.ns <= held[1] for k in kills.get(a["worker_name"], [])), (
                f"run {run_id} attempt {a['attempt']} lost on {a['worker_name']}, not killed then"
            )
    print(
        "KILLS",
        sum(map(len, kills.values())),
        "HIT",
        hit,
        "MULTI",
        sum(len(r["attempts"]) > 1 for r in runs.values()),
        len(ids),
    )
    assert hit, "no run was hit by a kill: the test tests nothing"
