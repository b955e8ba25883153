"""Hostile input gets a clear error and leaves the store unchanged. Table-driven, against a
real primary over TLS."""

import hashlib
import http.client
import json

import pytest
from fleet import AgentPeer, register_agent
from pgcluster import both_engines

pytestmark = both_engines

REGISTER = "/api/v1/workers/register"


def _store_digest(primary) -> str:
    """What the API can see of the store: workers, pipelines, runs, files."""
    c = primary.client
    state = [
        c.json("GET", "/api/v1/workers"),
        c.json("GET", "/api/v1/pipelines"),
        c.json("GET", "/api/v1/runs"),
        c.json("GET", "/api/v1/pipelines/base/files"),
    ]
    for w in state[0]["workers"]:
        w.pop("last_contact"), w.pop("load"), w.pop("state")
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


CASES = [
    # (method, path, body, content type, status, text the error must contain)
    ("POST", "/api/v1/pipelines", b"name: [unclosed\n", "application/yaml", 400, "yaml:"),
    (
        "POST",
        "/api/v1/pipelines",
        b'name: "a\\x07b"\njobs:\n  - name: a\n    steps: [x]\n',
        "application/yaml",
        400,
        "name: must be",
    ),
    (
        "POST",
        "/api/v1/pipelines",
        b"name: caf\xe9\njobs: []\n",
        "application/yaml",
        400,
        "not valid UTF-8",
    ),
    (
        "POST",
        "/api/v1/pipelines",
        b'name: base\njobs:\n  - name: "j\\nk"\n    steps: [x]\n',
        "application/yaml",
        400,
        "jobs[0].name: must be",
    ),
    (
        "PUT",
        "/api/v1/pipelines/base/files/../../etc/passwd",
        b"x",
        "application/octet-stream",
        400,
        "'..'",
    ),
    (
        "PUT",
        "/api/v1/pipelines/base/files/a%01b",
        b"x",
        "application/octet-stream",
        400,
        "control characters",
    ),
    ("GET", "/api/v1/runs/1/jobs/j/log?offset=-5", b"", "", 400, "offset"),
    ("GET", "/api/v1/runs/1/log?offset=abc", b"", "", 400, "offset"),
    (
        "PUT",
        "/api/v1/workers/nobody/tags",
        b'{"tags": ["ok", "bad tag"]}',
        "application/json",
        400,
        "tags",
    ),
    ("POST", REGISTER, b"{not json", "application/json", 400, "JSON object"),
    ("POST", REGISTER, b'["a list"]', "application/json", 400, "JSON object"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype", "status", "text"),
    CASES,
    ids=[f"{c[0]} {c[1][:40]} {c[4]}" for c in CASES],
)
def test_admin_and_registration_input(primary, method, path, body, ctype, status, text):
    primary.pipeline("name: base\njobs:\n  - name: j\n    steps: ['true']\n")
    primary.trigger("base")
    before = _store_digest(primary)
    got, _, raw = primary.client.request(method, path, body or None, ctype or "text/plain")
    assert got == status, raw
    answer = json.loads(raw)
    assert text in answer["error"] and answer["code"]
    assert _store_digest(primary) == before


def _declared_length(port: int, context, path: str, length: int, headers: dict) -> tuple:
    """Announce a body of `length` bytes and send none: the answer must come from the header
    alone, without the server reading (or the client sending) the megabytes."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    try:
        conn.putrequest("POST", path)
        for name, value in {**headers, "Content-Length": str(length)}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_oversize_bodies_are_refused_from_their_declared_length(primary):
    before = _pipelines(primary)
    status, body = _declared_length(
        primary.api_port,
        primary.client.context,
        "/api/v1/pipelines",
        9 << 20,
        {"Authorization": f"Bearer {primary.token}", "Content-Type": "application/yaml"},
    )
    assert status == 413 and body["code"] == "too_large"
    assert _pipelines(primary) == before


def _pipelines(primary) -> str:
    return json.dumps(primary.client.json("GET", "/api/v1/pipelines"))


def test_registration_fields_are_validated_before_anything_is_stored(primary):
    secret = primary.secret()
    good = {
        "secret": secret,
        "name": "w",
        "tags": [],
        "slots": 1,
        "version": "0.1.0",
        "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----",
    }
    for field, value, text in [
        ("name", "bad\x00name", "name:"),
        ("name", "x" * 65, "name:"),
        ("tags", ["a b"], "tags:"),
        ("slots", 0, "slots:"),
        ("slots", 65, "slots:"),
        ("slots", True, "slots:"),
        ("version", 7, "version:"),
        ("csr", 5, "csr:"),
        ("csr", good["csr"], "csr:"),
    ]:
        status, _, raw = primary.client.request(
            "POST", REGISTER, json.dumps({**good, field: value}).encode()
        )
        assert status == 400 and text in json.loads(raw)["error"], (field, value, raw)
    assert primary.workers() == []


def test_agent_log_offsets_and_sizes_are_checked(primary, fleet_root):
    assert register_agent(primary, fleet_root, "hostile").returncode == 0
    worker = AgentPeer.of_home(primary, fleet_root / "hostile")
    worker.answer()
    primary.pipeline("name: base\njobs:\n  - name: j\n    steps: ['true']\n")
    run_id = primary.trigger("base")
    [a] = worker.answer()["assignments"]
    assert worker.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})[0] == 200
    log = f"/agent/v1/runs/{run_id}/jobs/j/log?attempt=1"
    assert worker.call("POST", log + "&offset=-1", b"x")[0] == 400
    status, body = worker.call("POST", log + "&offset=1000000000000", b"x")
    assert status == 416 and body == {"error": body["error"], "code": "log_gap", "size": 0}
    status, body = _declared_length(
        primary.agent_port,
        worker.context,
        log + "&offset=0",
        5 << 20,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 413 and body["code"] == "too_large"
    assert (
        worker.call(
            "POST", f"/agent/v1/runs/{run_id}/jobs/nope/status", {"attempt": 1, "state": "running"}
        )[0]
        == 404
    )
    assert (
        worker.call(
            "POST", f"/agent/v1/runs/{run_id}/jobs/j/status", {"attempt": 1, "state": "exploded"}
        )[0]
        == 400
    )
    assert primary.job_log(run_id, "j") == b""
    assert a["run_id"] == run_id
