"""A worker's history of states (primary/fleet/worker_history.py), on both engines: an
admin's lock and unlock are recorded at once with the caller, the agent's own drain with
"its agent", a worker that stops answering turns inactive (with how long) and active again
when it is back, all newest first in GET /api/v1/workers/ID/history; it goes with the
worker."""

import os
import signal

from fleet import AgentPeer, wait_for
from pgcluster import both_engines


def history(primary, name: str) -> list[tuple[str, str | None]]:
    answer = primary.client.json("GET", f"/api/v1/workers/{name}/history")["history"]
    return [(h["state"], h["by"]) for h in answer]


@both_engines
def test_state_changes_are_recorded_with_who_made_them(primary, start_agent):
    agent = start_agent("kept")
    wait_for(lambda: history(primary, "kept")[:1] == [("active", None)], 30, "active recorded")

    # An admin's action is in the history when its answer comes: no sweep to wait for.
    primary.client.json("POST", "/api/v1/workers/kept/lock")
    state, by = history(primary, "kept")[0]
    assert state == "locked" and by.startswith("token initial admin"), by  # init's token
    primary.client.json("POST", "/api/v1/workers/kept/unlock")
    assert history(primary, "kept")[0] == ("active", by)
    # The agent's own drain (update-worker), and back.
    peer = AgentPeer.of_home(primary, agent.home)
    assert peer.call("POST", "/agent/v1/worker", {"draining": True})[0] == 200
    assert history(primary, "kept")[0] == ("draining", "its agent")
    assert peer.call("POST", "/agent/v1/worker", {"draining": False})[0] == 200
    assert history(primary, "kept")[0] == ("active", "its agent")

    # Time: a worker that stops answering is inactive once the heartbeat timeout passed.
    os.kill(agent.proc.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: history(primary, "kept")[0][0] == "inactive", 40, "inactive recorded")
    finally:
        os.kill(agent.proc.pid, signal.SIGCONT)
    wait_for(lambda: history(primary, "kept")[0][0] == "active", 40, "active again")
    answer = primary.client.json("GET", "/api/v1/workers/kept/history")["history"]
    assert answer[1]["state"] == "inactive" and answer[1]["by"] is None
    assert answer[1]["why"].startswith("no contact for ") and answer[1]["why"].endswith(" s")
    assert [h["state"] for h in answer[2:6]] == ["active", "draining", "active", "locked"]
    assert answer[0]["at"] >= answer[1]["at"] >= answer[2]["at"]  # newest first

    # Each change is written once (the sweep runs every second and finds nothing new).
    assert len(answer) == len({(h["at"], h["state"]) for h in answer})
    assert primary.client.request("GET", "/api/v1/workers/nobody/history")[0] == 404
    primary.client.json("DELETE", "/api/v1/workers/kept")
    assert primary.client.request("GET", "/api/v1/workers/kept/history")[0] == 404
