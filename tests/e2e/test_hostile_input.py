"""Hostile input gets a clear error and leaves the store unchanged. Table-driven, against a
real primary over TLS."""

import hashlib
import http.client
import json

import pytest
from fleet import AgentPeer, init_primary, passable, register_agent
from pgcluster import both_engines

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


@both_engines
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


@both_engines
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


# -- The cases of issue 11, on one primary shared by the module: each is refused with a 4xx,
# the primary stays up, and nothing it stores changes.

MAX = 2**63 - 1
TOO_BIG = str(MAX + 1)
# The issue's bomb: 7 levels of 10 aliases, under 400 bytes, 10 million nodes expanded.
BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
)


class Hostile:
    def __init__(self, primary, peer, run_id: int, worker_id: str):
        self.primary, self.peer, self.run_id, self.worker_id = primary, peer, run_id, worker_id
        self.sources = iter(range(2, 250))

    def public(self, method, path, body=b"", ctype="application/json", token=True):
        """A request to the public port from a loopback address of its own (127.0.0.N), so
        the registration limiter counts each case apart."""
        conn = http.client.HTTPSConnection(
            "127.0.0.1",
            self.primary.api_port,
            context=self.primary.client.context,
            timeout=30,
            source_address=(f"127.0.0.{next(self.sources)}", 0),
        )
        headers = {"Content-Type": ctype}
        if token:
            headers["Authorization"] = f"Bearer {self.primary.token}"
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hostile(request, tmp_path_factory):
    """A primary with a worker (driven by hand) running a run of `base`, which has a file;
    one on each engine (PostgreSQL refuses values SQLite takes: a NUL in a string)."""
    root = passable(tmp_path_factory.mktemp("hostile"))
    store = None
    if request.param == "postgresql":
        store = request.getfixturevalue("pg_cluster").create_database()
    # Nothing may change while the cases run: no lease, no heartbeat runs out meanwhile.
    primary = init_primary(
        root, "--heartbeat-timeout", "900", "--primary-worker-slots", "0", store=store
    )
    primary.start()
    try:
        assert register_agent(primary, root, "hostile").returncode == 0
        peer = AgentPeer.of_home(primary, root / "hostile")
        peer.answer()
        primary.pipeline("name: base\njobs:\n  - name: j\n    steps: ['true']\n")
        primary.client.json(
            "PUT",
            "/api/v1/pipelines/base/files/conf/app.ini",
            raw=b"[a]\n",
            content_type="application/octet-stream",
        )
        run_id = primary.trigger("base")
        [assignment] = peer.answer()["assignments"]
        assert assignment["run_id"] == run_id
        assert peer.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})[0] == 200
        yield Hostile(primary, peer, run_id, primary.worker("hostile")["id"])
    finally:
        primary.stop()


def _registration(**fields) -> bytes:
    body = {"secret": "x", "name": "w", "tags": [], "slots": 1, "version": "0.1.0", "csr": "x"}
    return json.dumps({**body, **fields}).encode()


# (id, port, method, path, body, status, code, text the error must contain). {run} is the
# module's run, {worker} its worker's id; bodies that are callables get the fixture.
ISSUE_CASES = [
    (
        "yaml bomb",
        "public",
        "POST",
        "/api/v1/pipelines",
        BOMB.encode(),
        400,
        "bad_request",
        "expands to more than 100000 nodes",
    ),
    (
        "yaml self alias",
        "public",
        "POST",
        "/api/v1/pipelines",
        b"a: &a [*a]\n",
        400,
        "bad_request",
        "an alias refers to a node it is part of",
    ),
    (
        "yaml 5000 nested lists",
        "public",
        "POST",
        "/api/v1/pipelines",
        b"[" * 5000 + b"]" * 5000,
        400,
        "bad_request",
        "nesting depth",
    ),
    (
        "yaml 40 nested lists",
        "public",
        "POST",
        "/api/v1/pipelines",
        b"name: " + b"[" * 40 + b"]" * 40,
        400,
        "bad_request",
        "nested deeper than 32 levels",
    ),
    (
        "yaml surrogate",
        "public",
        "POST",
        "/api/v1/pipelines",
        b'name: base\nenv: {A: "\\ud800"}\njobs: [{name: j, steps: [x]}]\n',
        400,
        "bad_request",
        "yaml:",
    ),
    (
        "register deep json",
        "public",
        "POST",
        REGISTER,
        b"[" * 100_000,
        400,
        "bad_request",
        "nested deeper than 32 levels",
    ),
    (
        "register lone surrogate",
        "public",
        "POST",
        REGISTER,
        _registration(secret="\ud800"),  # json.dumps writes it as the escape \\ud800
        400,
        "bad_request",
        "lone surrogate",
    ),
    (
        "register NaN",
        "public",
        "POST",
        REGISTER,
        _registration().replace(b'"slots": 1', b'"slots": NaN'),
        400,
        "bad_request",
        "NaN is not JSON",
    ),
    (
        "register slots 2^64",
        "public",
        "POST",
        REGISTER,
        _registration().replace(b'"slots": 1', b'"slots": 18446744073709551616'),
        400,
        "bad_request",
        "out of range",
    ),
    (
        "register id-form name",
        "public",
        "POST",
        REGISTER,
        "worker-id-name",
        400,
        "bad_request",
        "must not look like a worker id",
    ),
    (
        "register name in other case",
        "public",
        "POST",
        REGISTER,
        "upper-name",
        409,
        "name_taken",
        "already registered",
    ),
    ("run id 2^63", "public", "GET", f"/api/v1/runs/{TOO_BIG}", b"", 404, "not_found", ""),
    ("run id 10^30", "public", "GET", "/api/v1/runs/" + "9" * 30, b"", 404, "not_found", ""),
    ("run id arabic digit", "public", "GET", "/api/v1/runs/%D9%A1", b"", 404, "not_found", ""),
    (
        "log offset 2^63",
        "public",
        "GET",
        f"/api/v1/runs/{{run}}/log?offset={TOO_BIG}",
        b"",
        400,
        "bad_request",
        "offset",
    ),
    (
        "log offset underscore",
        "public",
        "GET",
        "/api/v1/runs/{run}/log?offset=1_0",
        b"",
        400,
        "bad_request",
        "offset",
    ),
    (
        "file below a file",
        "public",
        "PUT",
        "/api/v1/pipelines/base/files/conf/app.ini/sub",
        b"x",
        400,
        "bad_request",
        "conf/app.ini is a file",
    ),
    (
        "file path not utf-8",
        "public",
        "PUT",
        "/api/v1/pipelines/base/files/caf%FF.txt",
        b"x",
        400,
        "bad_request",
        "not valid UTF-8",
    ),
    (
        "query not utf-8",
        "public",
        "GET",
        "/api/v1/runs?pipeline=%FF",
        b"",
        400,
        "bad_request",
        "not valid UTF-8",
    ),
    (
        "tags surrogate",
        "public",
        "PUT",
        "/api/v1/workers/hostile/tags",
        b'{"tags": ["\\ud800"]}',
        400,
        "bad_request",
        "lone surrogate",
    ),
    (
        "root jobs not a bool",
        "public",
        "PUT",
        "/api/v1/workers/hostile/root-jobs",
        b'{"allowed": "yes"}',
        400,
        "bad_request",
        "allowed",
    ),
    (
        "agent run id 2^63",
        "agent",
        "POST",
        f"/agent/v1/runs/{TOO_BIG}/start",
        {"attempt": 1},
        404,
        "not_found",
        "",
    ),
    (
        "agent attempt 2^63",
        "agent",
        "POST",
        "/agent/v1/runs/{run}/start",
        f'{{"attempt": {TOO_BIG}}}'.encode(),
        400,
        "bad_request",
        "out of range",
    ),
    (
        "agent log attempt 2^63",
        "agent",
        "POST",
        f"/agent/v1/runs/{{run}}/jobs/j/log?attempt={TOO_BIG}&offset=0",
        b"x",
        400,
        "bad_request",
        "attempt",
    ),
    (
        "agent file attempt 10^20",
        "agent",
        "GET",
        "/agent/v1/runs/{run}/files/conf/app.ini?attempt=" + "9" * 20,
        b"",
        400,
        "bad_request",
        "attempt",
    ),
    (
        "agent exit code 2^63",
        "agent",
        "POST",
        "/agent/v1/runs/{run}/jobs/j/status",
        f'{{"attempt": 1, "state": "failed", "exit_code": {TOO_BIG}, "log_size": 0}}'.encode(),
        400,
        "bad_request",
        "out of range",
    ),
    (
        "poll run id 2^63",
        "agent",
        "POST",
        "/agent/v1/poll",
        f'{{"wait": false, "runs": [{{"run_id": {TOO_BIG}, "attempt": 1}}]}}'.encode(),
        400,
        "bad_request",
        "out of range",
    ),
    (
        "poll deep json",
        "agent",
        "POST",
        "/agent/v1/poll",
        b"[" * 100_000,
        400,
        "bad_request",
        "nested deeper",
    ),
    (
        "worker widens its tags",
        "agent",
        "POST",
        "/agent/v1/worker",
        {"tags": ["any"]},
        403,
        "tags_admin_only",
        "An admin sets them",
    ),
]


OLDER_CASES = [
    (
        "yaml unclosed",
        "public",
        "POST",
        "/api/v1/pipelines",
        b"name: [unclosed\n",
        400,
        "bad_request",
        "yaml:",
    ),
    (
        "name control character",
        "public",
        "POST",
        "/api/v1/pipelines",
        b'name: "a\\x07b"\njobs:\n  - name: a\n    steps: [x]\n',
        400,
        "bad_request",
        "name: must be",
    ),
    (
        "definition not utf-8",
        "public",
        "POST",
        "/api/v1/pipelines",
        b"name: caf\xe9\njobs: []\n",
        400,
        "bad_request",
        "not valid UTF-8",
    ),
    (
        "job name newline",
        "public",
        "POST",
        "/api/v1/pipelines",
        b'name: base\njobs:\n  - name: "j\\nk"\n    steps: [x]\n',
        400,
        "bad_request",
        "jobs[0].name: must be",
    ),
    (
        "file path dot dot",
        "public",
        "PUT",
        "/api/v1/pipelines/base/files/../../etc/passwd",
        b"x",
        400,
        "bad_request",
        "'..'",
    ),
    (
        "file path control character",
        "public",
        "PUT",
        "/api/v1/pipelines/base/files/a%01b",
        b"x",
        400,
        "bad_request",
        "control characters",
    ),
    (
        "job log offset negative",
        "public",
        "GET",
        "/api/v1/runs/{run}/jobs/j/log?offset=-5",
        b"",
        400,
        "bad_request",
        "offset",
    ),
    (
        "run log offset word",
        "public",
        "GET",
        "/api/v1/runs/{run}/log?offset=abc",
        b"",
        400,
        "bad_request",
        "offset",
    ),
    (
        "tag with a space",
        "public",
        "PUT",
        "/api/v1/workers/hostile/tags",
        b'{"tags": ["ok", "bad tag"]}',
        400,
        "bad_request",
        "tags",
    ),
    (
        "register not json",
        "public",
        "POST",
        REGISTER,
        b"{not json",
        400,
        "bad_request",
        "not valid JSON",
    ),
    (
        "register a list",
        "public",
        "POST",
        REGISTER,
        b'["a list"]',
        400,
        "bad_request",
        "JSON object",
    ),
]


@pytest.mark.parametrize(
    ("case", "port", "method", "path", "body", "status", "code", "text"),
    OLDER_CASES + ISSUE_CASES,
    ids=[c[0] for c in OLDER_CASES + ISSUE_CASES],
)
def test_hostile_input_gets_a_4xx_and_changes_nothing(
    hostile, case, port, method, path, body, status, code, text
):
    primary = hostile.primary
    before = _store_digest(primary)
    path = path.format(run=hostile.run_id)
    if body == "worker-id-name":
        body = _registration(secret=primary.secret(), name=hostile.worker_id.upper())
    elif body == "upper-name":
        body = _registration(secret=primary.secret(), name="HOSTILE")
    if port == "public":
        token = not path.startswith(REGISTER)
        got, answer = hostile.public(method, path, body, token=token)
    else:
        got, answer = hostile.peer.call(method, path, body)
    assert (got, answer.get("code")) == (status, code), answer
    assert text in answer.get("error", ""), answer
    assert primary.client.json("GET", "/healthz")["status"] == "ok"
    assert _store_digest(primary) == before
