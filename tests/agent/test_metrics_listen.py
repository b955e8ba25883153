"""`cifleet-agent run --metrics-listen`: the exposition (parsed by prometheus_client), the
bounded listener, and a real agent process whose figures follow what it does."""

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import RUN_OUTCOMES, MetricsServer, Snapshot, bind, parse_listen, render

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Snapshot(
    worker="builder-1",
    version="1.2.3",
    slots=4,
    slots_used=2,
    jobs_running=1,
    spool_backlog_bytes=1234,
    last_contact=1700000000.5,
    draining=False,
    fence_events=3,
    runs_ended={"delivered": 7, "fenced": 3},
)


def samples(text: str) -> dict[str, dict[tuple, float]]:
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return found


def test_the_exposition_is_valid_and_says_what_the_snapshot_says():
    got = samples(render(SNAPSHOT).decode())
    assert got["cifleet_agent_info"] == {(("version", "1.2.3"), ("worker", "builder-1")): 1}
    assert got["cifleet_agent_slots"] == {(): 4}
    assert got["cifleet_agent_slots_used"] == {(): 2}
    assert got["cifleet_agent_jobs_running"] == {(): 1}
    assert got["cifleet_agent_spool_backlog_bytes"] == {(): 1234}
    assert got["cifleet_agent_last_contact_timestamp_seconds"] == {(): 1700000000.5}
    assert got["cifleet_agent_draining"] == {(): 0}
    assert got["cifleet_agent_fence_events_total"] == {(): 3}
    ended = {k[0][1]: v for k, v in got["cifleet_agent_runs_ended_total"].items()}
    assert ended == {"delivered": 7, "taken_back": 0, "fenced": 3, "refused": 0, "stopped": 0}
    assert set(ended) == set(RUN_OUTCOMES)


def test_label_values_are_escaped():
    odd = Snapshot(**{**SNAPSHOT.__dict__, "version": 'a "quoted"\\ver\nsion'})
    got = samples(render(odd).decode())
    assert got["cifleet_agent_info"] == {
        (("version", 'a "quoted"\\ver\nsion'), ("worker", "builder-1")): 1
    }


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:9252", ("127.0.0.1", 9252)), ("[::1]:0", ("::1", 0)), (":9252", ("", 9252))],
)
def test_listen_addresses(addr, expected):
    assert parse_listen(addr) == expected


@pytest.mark.parametrize("addr", ["9252", "127.0.0.1", "host:port", "::1:9252", "h:70000", ""])
def test_bad_listen_addresses_are_refused(addr):
    with pytest.raises(ValueError):
        parse_listen(addr)


@pytest.fixture
def server():
    """A listener on a free loopback port, two clients at most, half a second each."""
    srv = MetricsServer(bind("127.0.0.1:0"), lambda: SNAPSHOT, max_clients=2, deadline=0.5)
    srv.start()
    yield srv
    srv.close()


def request(server, method: str, path: str) -> tuple[int, dict, bytes]:
    host, port = server.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_get_head_and_everything_else(server):
    status, headers, body = request(server, "GET", "/metrics?x=1")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert body == render(SNAPSHOT)
    status, headers, body = request(server, "HEAD", "/metrics")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(render(SNAPSHOT))))
    assert request(server, "GET", "/")[0] == 404
    status, headers, _ = request(server, "POST", "/metrics")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


def raw(server) -> socket.socket:
    host, port = server.address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def closed_by_server(sock: socket.socket) -> bytes:
    """What the server sent before it closed the connection (recv waits at most 10 s)."""
    data = b""
    while piece := sock.recv(65536):
        data += piece
    return data


def test_garbage_and_oversized_requests_get_an_answer_and_a_close(server):
    with raw(server) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        assert closed_by_server(sock).startswith(b"HTTP/1.1 400 ")
    with raw(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000)
        assert closed_by_server(sock).startswith(b"HTTP/1.1 431 ")


def test_a_client_that_trickles_is_cut_off_at_the_deadline(server):
    with raw(server) as sock:
        started = time.monotonic()
        sock.settimeout(0.05)
        cut = False
        for _ in range(200):  # 10 s at most; the deadline is 0.5 s
            try:
                sock.sendall(b"G")
                if sock.recv(1) == b"":
                    cut = True
                    break
            except TimeoutError:
                continue
            except OSError:  # reset: cut off too
                cut = True
                break
        assert cut
        assert time.monotonic() - started < 5


def test_clients_beyond_the_limit_are_closed_at_once_and_the_rest_served_later(server):
    silent = [raw(server), raw(server)]  # take both places and say nothing
    with raw(server) as third:
        third.settimeout(10)
        assert third.recv(1) == b""  # closed without waiting for the silent ones
    for sock in silent:
        assert closed_by_server(sock) == b""  # their deadline ended them
        sock.close()
    assert request(server, "GET", "/metrics")[0] == 200


# -- A real `cifleet-agent run` against the fake primary.


def assignment(run_id: int, step: str) -> dict:
    return {
        "run_id": run_id,
        "attempt": 1,
        "pipeline": "p",
        "env": {},
        "jobs": [{"name": "a", "steps": [step], "env": {}, "timeout": 600, "needs": []}],
    }


def wait(predicate, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


@pytest.fixture
def agent_process(agent_home, tmp_path):
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--home", str(agent_home)]
            + ["--metrics-listen", "127.0.0.1:0"],
            cwd=ROOT,
            stdout=out,
            stderr=out,
        )
    try:
        found = wait(
            lambda: re.search(rb"metrics at http://([\d.]+:\d+)/metrics", log.read_bytes()),
            "the metrics listener's address in the log",
        )
        yield proc, found.group(1).decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # cancel the jobs and stop
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def scrape(address: str) -> dict[str, dict[tuple, float]]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        return samples(response.read().decode())
    finally:
        conn.close()


def one(address: str, name: str, **labels) -> float:
    return scrape(address)[name][tuple(sorted(labels.items()))]


def test_the_agent_reports_slots_jobs_backlog_contact_and_fences(
    fake_primary, agent_process, tmp_path
):
    _, address = agent_process
    go, done = tmp_path / "go", tmp_path / "done"
    step = (
        f"while [ ! -e {go} ]; do sleep 0.05; done; printf 0123456789;"
        f" while [ ! -e {done} ]; do sleep 0.05; done"
    )
    before = time.time()
    # Retries at most 2 s apart (a quarter of it), and no fence unless cut off for 4 s.
    fake_primary.heartbeat_timeout = 8.0
    fake_primary.assignments.append(assignment(1, step))
    fake_primary.wait_for(lambda: fake_primary.started == [1])
    wait(lambda: one(address, "cifleet_agent_jobs_running") == 1, "the job to run")
    got = scrape(address)
    assert got["cifleet_agent_slots"] == {(): 2}
    assert got["cifleet_agent_slots_used"] == {(): 1}
    assert got["cifleet_agent_info"] == {
        (("version", __import__("agent").__version__), ("worker", "test-worker")): 1
    }
    assert before <= got["cifleet_agent_last_contact_timestamp_seconds"][()] <= time.time()

    # Output the primary cannot take piles up in the spool, and drains when it can again.
    fake_primary.down = True
    go.touch()
    wait(lambda: one(address, "cifleet_agent_spool_backlog_bytes") == 10, "a 10-byte backlog")
    fake_primary.down = False
    wait(lambda: one(address, "cifleet_agent_spool_backlog_bytes") == 0, "the backlog shipped")
    assert fake_primary.log(1, "a") == b"0123456789"
    done.touch()
    wait(
        lambda: one(address, "cifleet_agent_runs_ended_total", outcome="delivered") == 1,
        "the run to be delivered",
    )
    got = scrape(address)
    assert got["cifleet_agent_slots_used"] == {(): 0}
    assert got["cifleet_agent_jobs_running"] == {(): 0}
    assert got["cifleet_agent_fence_events_total"] == {(): 0}

    # Cut off from the primary for half the heartbeat timeout, it fences its run.
    fake_primary.heartbeat_timeout = 2.0
    fake_primary.assignments.append(assignment(2, "sleep 600"))
    fake_primary.wait_for(lambda: fake_primary.started == [1, 2])
    wait(lambda: one(address, "cifleet_agent_jobs_running") == 1, "the second job to run")
    fake_primary.down = True
    wait(lambda: one(address, "cifleet_agent_fence_events_total") == 1, "the fence")
    wait(
        lambda: one(address, "cifleet_agent_runs_ended_total", outcome="fenced") == 1,
        "the fenced run to end",
    )
    assert one(address, "cifleet_agent_slots_used") == 0


def test_a_taken_port_is_refused_before_the_agent_starts(agent_home):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "agent", "run", "--home", str(agent_home)]
            + ["--metrics-listen", f"127.0.0.1:{port}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ},
        )
    assert result.returncode == 2
    assert f"--metrics-listen 127.0.0.1:{port}: [Errno 98] Address already in use" in result.stderr
