"""An agent killed alone (kill -9) while its job runs on: what the job writes to the spool
meanwhile is sent by the agent's next process before its first poll, while the primary
still holds the attempt open, so the lost attempt's log keeps every byte (no log byte is
lost); then the run goes again."""

import os
import signal

import pytest
from fleet import wait_file_step, wait_for


# A heartbeat long enough that the lease outlives the agent's restart on a loaded machine.
@pytest.mark.parametrize("primary", [("--heartbeat-timeout", "40")], indirect=True)
def test_output_spooled_while_the_agent_was_down_is_delivered_when_it_starts_again(
    primary, start_agent, fleet_root
):
    agent = start_agent("restarted")
    gate, hold = fleet_root / "gate", fleet_root / "hold"
    step = f"echo before; {wait_file_step(gate)}; echo after; {wait_file_step(hold)}; echo done"
    primary.pipeline(f"name: spooled\njobs:\n  - name: w\n    steps: ['{step}']\n")
    run_id = primary.trigger("spooled")
    wait_for(lambda: primary.job_log(run_id, "w") == b"before\n", 30, "the first line")

    os.kill(agent.proc.pid, signal.SIGKILL)  # the agent alone: its job runs on
    agent.proc.wait(10)
    gate.touch()
    spool = agent.home / "spool" / f"{run_id}-1" / "w.log"
    wait_for(lambda: spool.read_bytes() == b"before\nafter\n", 30, "the job to write on")
    assert primary.job_log(run_id, "w") == b"before\n"  # nobody could send it

    agent.start()
    wait_for(lambda: primary.run(run_id)["attempts"][0]["outcome"] == "lost", 60, "attempt 1 lost")
    status, headers, lost = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/w/log"
    )
    assert (status, lost) == (200, b"before\nafter\n"), headers
    assert not spool.parent.exists()
    assert "the primary holds 13 byte(s) of its log" in agent.log_path.read_text()

    hold.touch()
    run = primary.wait_run(run_id, timeout=60)
    assert (run["state"], run["attempt"]) == ("success", 2)
    assert primary.job_log(run_id, "w") == b"before\nafter\ndone\n"
