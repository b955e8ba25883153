"""A job's artifacts (`artifacts:` globs): collected on the worker as the job's own uid,
uploaded before the job's final state, listed and downloaded byte-exact through the admin
API, on both store engines. Links the job planted (to the agent's key, to /etc/shadow) are
not followed; a tar a worker sends is checked before it is kept."""

import hashlib
import io
import json
import tarfile

import pytest
from fleet import AgentPeer, register_agent
from pgcluster import both_engines

BINARY = bytes(range(256)) * 40

STEPS = [
    "mkdir -p out/sub out/empty",
    "printf 'x' > out/top.txt",
    "python3 -c 'import sys; sys.stdout.buffer.write(bytes(range(256)) * 40)' > out/sub/data.bin",
    "seq 1 1000 > report.txt",
    "ln -s /etc/shadow out/shadow-link",
    "ln -s {home}/worker.key keylink",
    "echo 'not listed' > other.txt",
]


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}


@both_engines
def test_artifacts_round_trip_byte_exact_and_links_stay_behind(primary, start_agent, fleet_root):
    agent = start_agent("w1")
    steps = json.dumps([s.format(home=agent.home) for s in STEPS])
    primary.pipeline(
        "name: build\njobs:\n  - name: make\n"
        f"    steps: {steps}\n"
        "    artifacts: ['out/**', report.txt, keylink, 'missing-*']\n"
        "  - name: plain\n    steps: ['true']\n"
    )
    run_id = primary.trigger("build")
    assert primary.wait_run(run_id)["state"] == "success"

    listed = primary.client.json("GET", f"/api/v1/runs/{run_id}/artifacts")["artifacts"]
    assert primary.job_log(run_id, "make") == b""  # no line saying they were not uploaded
    assert [(a["job"], a["attempt"]) for a in listed] == [("make", 1)]
    assert sorted((f["path"], f["size"]) for f in listed[0]["files"]) == [
        ("out/sub/data.bin", len(BINARY)),
        ("out/top.txt", 1),
        ("report.txt", len(b"".join(b"%d\n" % i for i in range(1, 1001)))),
    ]
    status, headers, body = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/jobs/make/artifacts.tar"
    )
    assert status == 200
    assert headers["content-disposition"] == (
        f'attachment; filename="run-{run_id}-make-artifacts.tar"'
    )
    assert headers["x-sha256"] == hashlib.sha256(body).hexdigest() == listed[0]["sha256"]
    assert tar_members(body) == {
        "out/sub/data.bin": BINARY,
        "out/top.txt": b"x",
        "report.txt": b"".join(b"%d\n" % i for i in range(1, 1001)),
    }
    key = (agent.home / "worker.key").read_bytes()
    assert key not in body
    # One file of them, byte-exact, as a download; a path they do not hold is 404, a path
    # that leaves them 400.
    path = f"/api/v1/runs/{run_id}/jobs/make/artifacts"
    status, headers, data = primary.client.request("GET", f"{path}/out/sub/data.bin?attempt=1")
    assert (status, data) == (200, BINARY)
    assert headers["content-disposition"] == "attachment; filename*=UTF-8''data.bin"
    assert headers["content-type"] == "application/octet-stream"
    assert primary.client.request("GET", f"{path}/report.txt")[2] == b"".join(
        b"%d\n" % i for i in range(1, 1001)
    )
    assert primary.client.request("GET", f"{path}/keylink")[0] == 404
    assert primary.client.request("GET", f"{path}/out/../../worker.key")[0] == 400
    # The job without artifacts has none; an unknown job or run answers 404.
    status, _, _ = primary.client.request("GET", f"/api/v1/runs/{run_id}/jobs/plain/artifacts.tar")
    assert status == 404
    assert primary.client.request("GET", "/api/v1/runs/999999/artifacts")[0] == 404


def _tar(*members: tarfile.TarInfo, data: bytes = b"") -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(data) if member.isreg() else None)
    return out.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/shadow"
    return info


@pytest.mark.parametrize("primary", [("--max-artifact-bytes", "20000")], indirect=True)
def test_a_tar_from_a_worker_is_checked_before_it_is_kept(primary, fleet_root, engine):
    assert register_agent(primary, fleet_root, "sender").returncode == 0
    worker = AgentPeer.of_home(primary, fleet_root / "sender")
    worker.answer()
    primary.pipeline("name: p\njobs:\n  - name: j\n    steps: ['true']\n")
    run_id = primary.trigger("p")
    [assignment] = worker.answer()["assignments"]
    assert register_agent(primary, fleet_root, "other").returncode == 0
    other = AgentPeer.of_home(primary, fleet_root / "other")
    assert worker.call("POST", f"/agent/v1/runs/{run_id}/start", {"attempt": 1})[0] == 200
    path = f"/agent/v1/runs/{run_id}/jobs/j/artifacts?attempt=1"

    refused = {
        "a link": _tar(_member("out/link", tarfile.SYMTYPE)),
        "a way out": _tar(_member("../../etc/cron.d/x", size=2), data=b"hi"),
        "an absolute name": _tar(_member("/etc/passwd", size=2), data=b"hi"),
        "not a tar": b"just bytes, not a tar at all" * 40,
    }
    for why, body in refused.items():
        status, answer = worker.call("POST", path, body)
        assert (status, answer["code"]) == (400, "bad_request"), (why, answer)
    too_big = _tar(_member("big.bin", size=30000), data=b"b" * 30000)
    status, answer = worker.call("POST", path, too_big)
    assert (status, answer["code"]) == (413, "too_large")
    # Another worker may not write this run's artifacts.
    status, _ = other.call("POST", path, _tar(_member("a.txt", size=2), data=b"ok"))
    assert status == 403
    assert primary.client.json("GET", f"/api/v1/runs/{run_id}/artifacts")["artifacts"] == []

    good = _tar(_member("dir/a.txt", size=2), data=b"ok")
    assert worker.call("POST", path, good) == (
        200,
        {"size": len(good), "sha256": hashlib.sha256(good).hexdigest(), "files": 1},
    )
    status, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/jobs/j/artifacts.tar")
    assert (status, body) == (200, good)
    assert list((primary.data_dir / "artifacts").glob(".upload-*")) == []

    # A repeat replaces it; on SQLite its file is written beside the one the row still
    # describes, and the old one goes after the commit: one file is left.
    again = _tar(_member("dir/b.txt", size=5), data=b"again")
    assert worker.call("POST", path, again)[0] == 200
    status, _, body = primary.client.request("GET", f"/api/v1/runs/{run_id}/jobs/j/artifacts.tar")
    assert (status, body) == (200, again)
    kept = list((primary.data_dir / "artifacts").rglob("*.tar"))
    assert len(kept) == (1 if engine == "sqlite" else 0), kept
