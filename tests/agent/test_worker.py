"""The whole agent loop against the fake primary: polls, assignments, cancel, drain, stop."""

import hashlib
import logging
import threading
import time

import psutil
from fleet import wait_file_step

from agent.protocol import (
    IDLE_POLL_CLIENT_TIMEOUT_SECONDS,
    IDLE_POLL_MAX_HOLD_SECONDS,
    POLL_CLIENT_TIMEOUT_SECONDS,
)
from agent.worker import Agent, poll_client_timeout


def assignment(run_id, *jobs, attempt=1, pipeline="p"):
    return {
        "run_id": run_id,
        "attempt": attempt,
        "pipeline": pipeline,
        "env": {},
        "jobs": [{"name": n, "steps": [s], "env": {}, "timeout": 60, "needs": []} for n, s in jobs],
    }


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_poll_body_and_a_run_end_to_end(agent_home, fake_primary, running_agent):
    fake_primary.assignments.append(assignment(1, ("a", "echo hello")))
    agent, _ = running_agent()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.log(1, "a") == b"hello\n"
    first = fake_primary.polls[0]
    assert first["slots"] == 2 and first["draining"] is False and first["wait"] is True
    assert first["runs"] == [] and first["version"]
    assert set(first["load"]) == {"load1", "load5", "cpus", "memory_percent"}
    # Idle, it says how long it waits for an answer; with a run, it says nothing (the
    # primary holds such a poll briefly: its run's lease is renewed by the next one).
    assert first["max_hold"] == IDLE_POLL_MAX_HOLD_SECONDS
    assert first["primaries"] == []  # the fleet's others, as learned: none yet
    # the run is held (reported in polls) until finish is acknowledged, then dropped
    fake_primary.wait_for(lambda: len(fake_primary.polls) >= 3)
    assert fake_primary.polls[-1]["runs"] == []
    assert fake_primary.polls[-1]["max_hold"] == IDLE_POLL_MAX_HOLD_SECONDS
    busy = [p for p in fake_primary.polls if p["runs"]]
    assert busy and all("max_hold" not in p and "primaries" not in p for p in busy)
    assert not (agent_home / "spool" / "1-1").exists()
    assert (agent_home / "workspaces" / "p").is_dir()


def test_held_runs_are_reported_and_cancel_kills_the_job(agent_home, fake_primary, running_agent):
    fake_primary.assignments.append(
        assignment(2, ("a", "echo $$ > sh.pid; sleep 1000"), ("b", "true"))
    )
    agent, _ = running_agent()
    pidfile = agent_home / "workspaces" / "p" / "sh.pid"
    fake_primary.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    fake_primary.wait_for(lambda: {"run_id": 2, "attempt": 1} in fake_primary.polls[-1]["runs"])
    fake_primary.cancels.add((2, 1))
    fake_primary.wait_for(lambda: fake_primary.finished == [2])
    assert gone(int(pidfile.read_text()))
    assert fake_primary.states(2, "a") == ["running", "cancelled"]
    assert fake_primary.states(2, "b") == ["skipped"]


def test_slots_limit_concurrent_runs(agent_home, fake_primary, running_agent, tmp_path):
    go = tmp_path / "go"
    fake_primary.assignments.extend(
        [assignment(i, ("a", wait_file_step(go)), pipeline=f"p{i}") for i in (1, 2, 3)]
    )
    running_agent()
    # The poll after the answer lists what the agent took: two runs, not run 3 (it found no
    # free slot, and is left to the primary).
    taken = fake_primary.poll_after_assignments()["runs"]
    assert sorted(r["run_id"] for r in taken) == [1, 2]
    go.touch()
    fake_primary.wait_for(lambda: sorted(fake_primary.finished) == [1, 2])
    assert sorted(fake_primary.started) == [1, 2]


def test_no_busy_loop_on_quick_empty_answers(fake_primary, running_agent):
    # Answered at once with nothing, the agent pauses 0.5 to 1 s before it polls again. A
    # loaded machine can only make the gaps between polls longer, never shorter.
    fake_primary.hold = 0.0
    running_agent()
    fake_primary.wait_for(lambda: len(fake_primary.poll_times) >= 4)
    times = fake_primary.poll_times[:4]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.5, gaps


def test_a_quick_answer_with_poll_after_is_kept(fake_primary, running_agent):
    # A primary with no thread to hold the poll on asks for a pause of 4 s: the agent waits
    # 2 to 4 s (jittered) instead of its usual 0.5 to 1 s. A loaded machine can only make
    # the gaps between polls longer, never shorter than the pause.
    fake_primary.hold = 0.0
    fake_primary.poll_after = 4.0
    running_agent()
    fake_primary.wait_for(lambda: len(fake_primary.poll_times) >= 3, timeout=60)
    first, second, third = fake_primary.poll_times[:3]
    assert second - first >= 2.0 and third - second >= 2.0, fake_primary.poll_times


def test_a_cancel_for_a_finished_run_leaves_the_pooled_connections_alone(
    fake_primary, running_agent
):
    # The cancel comes while the finish answer is on its way, when the run has already
    # given its static-file connection back to the pool, where the next run takes it.
    # Runs one after another (each fetching a changed file) then need no new connection.
    fake_primary.hold = 0.05
    fake_primary.cancel_finished = True
    fake_primary.finish_delay = 0.5
    running_agent()
    for run_id in range(1, 6):
        data = str(run_id).encode()
        fake_primary.files = {"f": data}
        run = assignment(run_id, ("a", "true"))
        run["files"] = [{"path": "f", "sha256": hashlib.sha256(data).hexdigest(), "size": 1}]
        fake_primary.assignments.append(run)
        fake_primary.wait_for(
            lambda r=run_id: r in fake_primary.finished and not fake_primary.polls[-1]["runs"]
        )
        if run_id == 1:
            warm = fake_primary.accepted  # the poll's connection and the run's two
    assert len(fake_primary.file_requests) == 5
    assert fake_primary.accepted == warm


def test_drain_finishes_the_current_run_then_returns(
    agent_home, fake_primary, running_agent, tmp_path
):
    # Polls are held far longer than the test waits: a draining poll can only come because
    # the drain broke the held one.
    fake_primary.hold = 300.0
    go_on = tmp_path / "go-on"  # the run waits for it: it is surely running while draining
    fake_primary.assignments.append(assignment(3, ("a", f"{wait_file_step(go_on)}; echo done")))
    agent, t = running_agent()
    fake_primary.wait_for(lambda: fake_primary.started == [3])
    agent.request_drain()
    fake_primary.wait_for(lambda: any(p["draining"] for p in fake_primary.polls), timeout=30)
    fake_primary.assignments.append(assignment(4, ("a", "true")))  # refused while draining
    fake_primary.wait_for(lambda: not fake_primary.assignments)  # handed out (and refused)
    go_on.touch()
    t.join(30)
    assert not t.is_alive()
    assert fake_primary.finished == [3] and fake_primary.log(3, "a") == b"done\n"
    assert 4 not in fake_primary.started
    assert agent.unknown_worker is False


def test_force_stop_cancels_and_delivers(agent_home, fake_primary, running_agent):
    fake_primary.assignments.append(assignment(5, ("a", "echo $$ > sh.pid; sleep 1000")))
    agent, t = running_agent()
    pidfile = agent_home / "workspaces" / "p" / "sh.pid"
    fake_primary.wait_for(lambda: pidfile.exists() and pidfile.read_text().strip())
    agent.request_force_stop()
    t.join(15)
    assert not t.is_alive()
    assert fake_primary.states(5, "a") == ["running", "cancelled"]
    assert fake_primary.finished == [5]
    assert gone(int(pidfile.read_text()))


def test_unknown_worker_stops_the_agent(fake_primary, running_agent):
    fake_primary.unknown_worker = True
    agent, t = running_agent()
    t.join(10)
    assert not t.is_alive()
    assert agent.unknown_worker is True


def test_external_stop_event_returns_promptly_during_a_long_poll(agent_home, fake_primary):
    fake_primary.hold = 300.0  # far longer than the join below waits
    stop = threading.Event()
    agent = Agent(agent_home, stop)
    t = threading.Thread(target=agent.run, daemon=True)
    t.start()
    fake_primary.wait_for(lambda: fake_primary.polls)
    stop.set()
    t.join(30)
    assert not t.is_alive()


def test_keeps_polling_through_an_outage(fake_primary, running_agent, caplog):
    caplog.set_level(logging.WARNING, logger="agent.worker")
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.polls)
    fake_primary.stop()
    # A poll failed during the outage (it lasts as long as it takes to see one fail) ...
    fake_primary.wait_for(lambda: "cannot reach the primary" in caplog.text, timeout=30)
    before = len(fake_primary.polls)
    fake_primary.start()
    # ... and the agent polls again once the primary is back.
    fake_primary.wait_for(lambda: len(fake_primary.polls) > before, timeout=10)


def test_a_poll_is_read_for_longer_than_the_primary_may_hold_it():
    idle = {"runs": [], "max_hold": IDLE_POLL_MAX_HOLD_SECONDS}
    assert poll_client_timeout(idle) == IDLE_POLL_CLIENT_TIMEOUT_SECONDS
    assert IDLE_POLL_CLIENT_TIMEOUT_SECONDS > IDLE_POLL_MAX_HOLD_SECONDS
    assert poll_client_timeout({"runs": [{"run_id": 1, "attempt": 1}]}) == (
        POLL_CLIENT_TIMEOUT_SECONDS
    )


def test_an_idle_agent_ends_its_held_poll_when_its_load_moves(
    fake_primary, running_agent, monkeypatch
):
    """The primary holds an idle poll for minutes and places runs by the load it reported:
    a load that moves by a step the scheduler notices is told at once, in a new poll. One
    that stays is not: the held poll is not ended for nothing."""
    import agent.worker as worker

    load = {"load1": 0.1, "load5": 0.1, "cpus": 2, "memory_percent": 20.0}
    monkeypatch.setattr(worker, "load_report", lambda: dict(load))
    monkeypatch.setattr(worker, "LOAD_CHECK_SECONDS", 0.3)
    fake_primary.hold = 300.0  # far longer than the test waits
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.polls)
    time.sleep(1.5)  # five checks of an unchanged load
    load["load1"] = 0.5  # 0.2 per core: below a step
    time.sleep(1.5)
    assert len(fake_primary.polls) == 1
    load["load1"] = 1.2  # 0.55 per core from what the held poll said
    fake_primary.wait_for(lambda: len(fake_primary.polls) == 2, timeout=10)
    assert fake_primary.polls[0]["load"]["load1"] == 0.1
    assert fake_primary.polls[1]["load"]["load1"] == 1.2
    assert fake_primary.polls[1]["max_hold"] == IDLE_POLL_MAX_HOLD_SECONDS
    time.sleep(1.5)  # the new poll's load is the one compared now
    assert len(fake_primary.polls) == 2
