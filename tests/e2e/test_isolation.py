"""A worker may read and write only the runs assigned to it (403 otherwise); its own attempt
that was taken back is refused as stale (409). Driven by hand over real mutual TLS."""

from fleet import AgentPeer, register_agent


def test_workers_only_touch_their_own_runs(primary, fleet_root):
    for name in ("iso-a", "iso-b"):
        assert register_agent(primary, fleet_root, name).returncode == 0
    a = AgentPeer.of_home(primary, fleet_root / "iso-a")
    b = AgentPeer.of_home(primary, fleet_root / "iso-b")
    b.answer()  # both active; iso-a sorts first, so it is chosen
    a.answer()
    primary.pipeline("name: mine\njobs:\n  - name: j\n    steps: ['true']\n")
    primary.client.json(
        "PUT",
        "/api/v1/pipelines/mine/files/f.txt",
        raw=b"data",
        content_type="application/octet-stream",
    )
    run_id = primary.trigger("mine")
    [assignment] = a.answer()["assignments"]
    assert (assignment["run_id"], assignment["attempt"]) == (run_id, 1)

    for method, path, body in [
        ("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1}),
        ("POST", f"/agent/v1/runs/{run_id}/prepare", {"attempt": 1, "lines": ["x"]}),
        ("POST", f"/agent/v1/runs/{run_id}/jobs/j/status", {"attempt": 1, "state": "running"}),
        ("POST", f"/agent/v1/runs/{run_id}/jobs/j/log?attempt=1&offset=0", b"forged"),
        ("GET", f"/agent/v1/runs/{run_id}/files/f.txt?attempt=1", b""),
        ("POST", f"/agent/v1/runs/{run_id}/finish", {"attempt": 1}),
    ]:
        status, body_ = b.call(method, path, body)
        assert status == 403 and body_["code"] == "not_your_run", (path, status, body_)

    # iso-a is drained before it confirmed: the assignment is taken back and goes to iso-b.
    primary.client.json("POST", "/api/v1/workers/iso-a/drain")
    [again] = b.answer()["assignments"]
    assert (again["run_id"], again["attempt"]) == (run_id, 2)
    status, body_ = a.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})
    assert status == 409 and body_["code"] == "stale_attempt"
    assert b.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 2})[0] == 200
    assert b.call("GET", f"/agent/v1/runs/{run_id}/files/f.txt?attempt=2")[0] == 200
    status, body_ = a.call(
        "POST", f"/agent/v1/runs/{run_id}/jobs/j/log?attempt=2&offset=0", b"forged"
    )
    assert status == 403 and body_["code"] == "not_your_run"
    assert primary.job_log(run_id, "j") == b""
    attempts = primary.run(run_id)["attempts"]
    assert [(x["attempt"], x["worker_name"], x["outcome"]) for x in attempts] == [
        (1, "iso-a", "taken back"),
        (2, "iso-b", None),
    ]
