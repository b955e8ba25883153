"""Renaming and deleting a pipeline with the admin API, a real agent and both stores: what
moves with a rename, what goes with a delete, what stays, and the refusals while runs are
not finished (primary/pipelines/lifecycle.py)."""

import json

from fleet import wait_for
from pgcluster import both_engines

pytestmark = both_engines

DEFINITION = """\
name: {name}
jobs:
  - name: show
    secrets: [TOKEN]
    steps: ['cat conf.txt; echo "token=$TOKEN"; pwd']
"""
CONF = b"conf bytes\n"


def _status(primary, method: str, path: str, body: bytes = b"") -> tuple[int, dict]:
    status, _, raw = primary.client.request(method, path, body or None, "text/plain")
    return status, json.loads(raw) if raw else {}


def test_a_rename_moves_everything_and_a_delete_removes_what_it_says(primary, start_agent):
    agent = start_agent("life-host")
    primary.pipeline(DEFINITION.format(name="old"))
    assert _status(primary, "PUT", "/api/v1/pipelines/old/files/conf.txt", CONF)[0] == 200
    assert _status(primary, "PUT", "/api/v1/pipelines/old/secrets/TOKEN", b"s3cret")[0] == 200
    first = primary.wait_run(primary.trigger("old"))
    assert first["state"] == "success", primary.job_log(first["id"], "show")
    workspaces = agent.home / "workspaces"
    assert (workspaces / "old").is_dir()

    # A queued run holds both back: a run of a second pipeline nobody can take.
    primary.pipeline(
        "name: waits\ntags: [nobody-has-this]\njobs:\n  - name: a\n    steps: ['true']\n"
    )
    queued = primary.trigger("waits")
    for method, body in (
        ("DELETE", b""),
        ("PUT", b"name: waits2\njobs:\n  - name: a\n    steps: ['true']\n"),
    ):
        status, answer = _status(primary, method, "/api/v1/pipelines/waits", body)
        assert (status, answer["code"]) == (409, "runs_active"), answer
        assert f"{queued} (queued)" in answer["error"]
    assert primary.client.json("GET", "/api/v1/pipelines/waits")["name"] == "waits"
    # A taken name is refused, and nothing of either pipeline changes.
    status, answer = _status(
        primary, "PUT", "/api/v1/pipelines/old", DEFINITION.format(name="waits").encode()
    )
    assert (status, answer["code"]) == (409, "exists")
    # An invalid definition: 400, nothing renamed.
    status, answer = _status(primary, "PUT", "/api/v1/pipelines/old", b"name: new\njobs: []\n")
    assert status == 400
    assert primary.client.json("GET", "/api/v1/pipelines/old")["name"] == "old"

    renamed = primary.client.json(
        "PUT",
        "/api/v1/pipelines/old",
        raw=DEFINITION.format(name="new").encode(),
        content_type="text/plain",
    )
    assert (renamed["name"], renamed["home_worker_id"], renamed["cache_cleared"]) == (
        "new",
        None,
        True,
    )
    assert _status(primary, "GET", "/api/v1/pipelines/old")[0] == 404
    names = [p["name"] for p in primary.client.json("GET", "/api/v1/pipelines")["pipelines"]]
    assert names == ["new", "waits"]  # one pipeline, not a second one
    assert [r["id"] for r in primary.client.json("GET", "/api/v1/runs?pipeline=new")["runs"]] == [
        first["id"]
    ]
    assert primary.client.json("GET", "/api/v1/pipelines/new/secrets") == {"secrets": ["TOKEN"]}
    status, _, data = primary.client.request("GET", "/api/v1/pipelines/new/files/conf.txt")
    assert (status, data) == (200, CONF)

    second = primary.wait_run(primary.trigger("new"))
    log = primary.job_log(second["id"], "show").decode()
    assert second["state"] == "success", log
    assert log.startswith("conf bytes\ntoken=***\n") and log.rstrip().endswith("/workspaces/new")
    # The old workspace goes on the agent's next poll: no pipeline names it any more.
    wait_for(lambda: not (workspaces / "old").exists(), 30, "the old workspace to go")
    # Run again of a run from before the rename runs under the new name.
    again = primary.client.json("POST", f"/api/v1/runs/{first['id']}/again")["id"]
    assert primary.wait_run(again)["pipeline"] == "new"

    deleted = primary.client.json("DELETE", "/api/v1/pipelines/new")
    assert deleted == {"name": "new", "deleted": True, "runs_kept": 3}
    assert _status(primary, "GET", "/api/v1/pipelines/new")[0] == 404
    assert _status(primary, "DELETE", "/api/v1/pipelines/new")[0] == 404
    assert _status(primary, "POST", "/api/v1/pipelines/new/runs")[0] == 404
    # Its finished runs and their logs stay readable.
    assert primary.run(second["id"])["state"] == "success"
    assert primary.job_log(second["id"], "show").decode() == log
    wait_for(
        lambda: not (workspaces / "new").exists(), 30, "the deleted pipeline's workspace to go"
    )
    # A new pipeline of that name starts with no files and no secrets.
    primary.pipeline(DEFINITION.format(name="new"))
    assert primary.client.json("GET", "/api/v1/pipelines/new/files") == {"files": []}
    assert primary.client.json("GET", "/api/v1/pipelines/new/secrets") == {"secrets": []}
    assert not (primary.data_dir / "files" / "new").exists()


def test_runs_are_paged_through_with_before_and_limit(primary):
    primary.pipeline("name: many\ntags: [nobody]\njobs:\n  - name: a\n    steps: ['true']\n")
    ids = [primary.trigger("many") for _ in range(5)]
    first = primary.client.json("GET", "/api/v1/runs?limit=2")["runs"]
    assert [r["id"] for r in first] == ids[:-3:-1]
    rest = primary.client.json("GET", f"/api/v1/runs?limit=2&before={first[-1]['id']}")["runs"]
    assert [r["id"] for r in rest] == [ids[2], ids[1]]
    for query in ("limit=0", "limit=101", "before=x", "limit=%C2%B2"):
        status, _, body = primary.client.request("GET", f"/api/v1/runs?{query}")
        assert status == 400, (query, body)
