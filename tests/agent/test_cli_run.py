"""`cifleet-agent run` as a real process: signals, exit codes, logging."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fleet import wait_file_step

ROOT = Path(__file__).resolve().parents[2]


def assignment(run_id, step):
    return {
        "run_id": run_id,
        "attempt": 1,
        "pipeline": "p",
        "env": {},
        "jobs": [{"name": "a", "steps": [step], "env": {}, "timeout": 60, "needs": []}],
    }


@pytest.fixture
def start_agent(agent_home):
    procs = []

    def start():
        env = dict(os.environ, CIFLEET_TEST_SECRET_SENTINEL="agent-only")
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--home", str(agent_home)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_drains_then_exits_0(fake_primary, start_agent, tmp_path):
    fake_primary.hold = 5.0
    go_on = tmp_path / "go-on"  # the job waits for it: it surely runs while the agent drains
    step = f"{wait_file_step(go_on)}; echo $CIFLEET_TEST_SECRET_SENTINEL"
    fake_primary.assignments.append(assignment(1, step))
    proc = start_agent()
    fake_primary.wait_for(lambda: fake_primary.started == [1])
    proc.send_signal(signal.SIGTERM)
    fake_primary.wait_for(lambda: any(p["draining"] for p in fake_primary.polls), timeout=30)
    go_on.touch()
    assert proc.wait(30) == 0
    assert fake_primary.finished == [1]
    assert fake_primary.log(1, "a") == b"\n"  # the agent's environment did not leak
    err = proc.stderr.read()
    assert "draining" in err
    assert err.splitlines()[0][:4].isdigit()  # lines start with a timestamp


@pytest.mark.parametrize("signals", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGQUIT,)])
def test_second_sigterm_or_sigquit_cancels_and_exits(fake_primary, start_agent, signals):
    fake_primary.assignments.append(assignment(2, "sleep 1000"))
    proc = start_agent()
    fake_primary.wait_for(lambda: fake_primary.states(2, "a") == ["running"])
    for n, sig in enumerate(signals):
        if n:  # two signals sent at once would merge into one pending signal
            fake_primary.wait_for(lambda: fake_primary.polls[-1]["draining"])
        proc.send_signal(sig)
    assert proc.wait(20) == 0
    assert fake_primary.states(2, "a") == ["running", "cancelled"]
    assert fake_primary.finished == [2]


def test_unknown_worker_exits_3(fake_primary, start_agent):
    fake_primary.unknown_worker = True
    proc = start_agent()
    assert proc.wait(15) == 3
    assert "the primary no longer knows this worker" in proc.stderr.read()
