"""A run reported to a real primary by hand, in both forms the agent protocol allows: one
call per status, or the first job's running status with prepare and the last job's final
status with finish."""

import pytest
from fleet import AgentPeer, register_agent
from pgcluster import both_engines

pytestmark = both_engines


def assigned_run(primary, fleet_root, name: str) -> tuple[AgentPeer, int]:
    assert register_agent(primary, fleet_root, name).returncode == 0
    peer = AgentPeer.of_home(primary, fleet_root / name)
    peer.answer()  # active
    primary.pipeline(
        "name: two\njobs:\n  - name: a\n    steps: ['true']\n"
        "  - name: b\n    steps: ['true']\n    needs: [a]\n"
    )
    run_id = primary.trigger("two")
    [assignment] = peer.answer()["assignments"]
    assert assignment["run_id"] == run_id
    assert peer.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})[0] == 200
    return peer, run_id


def ok(peer: AgentPeer, path: str, body) -> dict:
    status, answer = peer.call("POST", path, body)
    assert status == 200, (path, status, answer)
    return answer


def test_one_call_per_status(primary, fleet_root):
    peer, run_id = assigned_run(primary, fleet_root, "separate")
    runs = f"/agent/v1/runs/{run_id}"
    ok(peer, f"{runs}/prepare", {"attempt": 1, "lines": []})
    for job, output in (("a", b"out-a\n"), ("b", b"")):
        ok(peer, f"{runs}/jobs/{job}/status", {"attempt": 1, "state": "running"})
        if output:
            ok(peer, f"{runs}/jobs/{job}/log?attempt=1&offset=0", output)
        final = {"attempt": 1, "state": "success", "exit_code": 0, "log_size": len(output)}
        ok(peer, f"{runs}/jobs/{job}/status", final)
    assert ok(peer, f"{runs}/finish", {"attempt": 1}) == {"state": "success"}
    run = primary.run(run_id)
    assert run["state"] == "success"
    assert [(j["name"], j["state"], j["exit_code"]) for j in run["jobs"]] == [
        ("a", "success", 0),
        ("b", "success", 0),
    ]
    assert primary.job_log(run_id, "a") == b"out-a\n"


def test_statuses_with_prepare_and_finish(primary, fleet_root):
    peer, run_id = assigned_run(primary, fleet_root, "folded")
    runs = f"/agent/v1/runs/{run_id}"
    ok(peer, f"{runs}/prepare", {"attempt": 1, "lines": [], "job_started": "a"})
    assert [j["state"] for j in primary.run(run_id)["jobs"]] == ["running", "pending"]
    ok(
        peer,
        f"{runs}/jobs/a/status",
        {"attempt": 1, "state": "success", "exit_code": 0, "log_size": 0},
    )
    ok(peer, f"{runs}/jobs/b/status", {"attempt": 1, "state": "running"})
    last = {"name": "b", "state": "failed", "exit_code": 3, "log_size": 4}
    # finish with the last job's status waits for its whole log, like the status call...
    status, answer = peer.call("POST", f"{runs}/finish", {"attempt": 1, "job": last})
    assert (status, answer["code"], answer["size"]) == (409, "log_incomplete", 0)
    assert primary.run(run_id)["state"] == "running"
    ok(peer, f"{runs}/jobs/b/log?attempt=1&offset=0", b"boom")
    assert ok(peer, f"{runs}/finish", {"attempt": 1, "job": last}) == {"state": "failed"}
    # ...and a repeat (the answer was lost) gets the same answer.
    assert ok(peer, f"{runs}/finish", {"attempt": 1, "job": last}) == {"state": "failed"}
    run = primary.run(run_id)
    assert run["state"] == "failed"
    assert [(j["name"], j["state"], j["exit_code"]) for j in run["jobs"]] == [
        ("a", "success", 0),
        ("b", "failed", 3),
    ]
    assert primary.job_log(run_id, "b") == b"boom"


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("prepare", {"attempt": 1, "lines": ["noted"], "job_started": 7}, 400),
        ("prepare", {"attempt": 1, "lines": ["noted"], "job_started": "nope"}, 404),
        ("finish", {"attempt": 1, "job": "b"}, 400),
        ("finish", {"attempt": 1, "job": {"name": "a", "state": "exploded"}}, 400),
        ("finish", {"attempt": 1, "job": {"name": "a", "state": "success"}}, 400),  # no log_size
    ],
)
def test_bad_folded_statuses_are_refused_and_nothing_is_written(
    primary, fleet_root, path, body, code
):
    peer, run_id = assigned_run(primary, fleet_root, "bad")
    status, answer = peer.call("POST", f"/agent/v1/runs/{run_id}/{path}", body)
    assert status == code, answer
    run = primary.run(run_id)
    assert run["state"] == "running"
    assert [j["state"] for j in run["jobs"]] == ["pending", "pending"]
    _, _, log = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert b"noted" not in log
