"""Each bound of primary/server, against the real servers in this process: both ports on
one event loop (server/loop.py) over loopback TLS, serving small WSGI apps. Deadlines are
set short; every wait is bounded, and each test forces the event and checks its effect."""

import dataclasses
import datetime
import gc
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest
from fleet import wait_for

from agent.keys import csr_pem, key_pem, new_key
from primary.cli.listeners import bind_listener
from primary.errors import StorageUnavailable
from primary.fleet.ca import CertificateAuthority, create_ca
from primary.metrics.instruments import Metrics
from primary.server import deferral
from primary.server.bounds import ServerBounds
from primary.server.loop import PortSpec, Servers

BOUNDS = ServerBounds(
    handshake_timeout=1.0,
    handshakes_per_address=3,
    connections_per_address=4,
    worker_connections=3,
    worker_requests=2,
    public_connections=64,
    agent_connections=64,
    idle_timeout=2.0,
    header_timeout=1.0,
    body_timeout=1.0,
    body_min_rate=1000,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    cert_pem, ca_key = create_ca()
    ca = CertificateAuthority(cert_pem, ca_key)
    files = {"ca": root / "ca.pem", "server": root / "server.pem", "server_key": root / "s.key"}
    files["ca"].write_text(cert_pem)
    server_cert, server_key = ca.issue_server(["127.0.0.1"])
    files["server"].write_text(server_cert)
    files["server_key"].write_text(server_key)
    for name in ("w1", "w2"):
        key = new_key()
        issued = ca.issue_worker(csr_pem(key, name), name, datetime.timedelta(days=1))
        files[name] = root / f"{name}.pem"
        files[name].write_text(issued.pem)
        files[f"{name}_key"] = root / f"{name}.key"
        files[f"{name}_key"].write_bytes(key_pem(key))
    return files


class _Wait:
    def __init__(self, woken: bool) -> None:
        self.woken = woken

    async def wait_async(self, timeout: float, until=None) -> bool:
        return self.woken


class FailingAnswer:
    """A deferred request whose answer raises: the store went away ("store"), or a bug."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.waiter = _Wait(woken=True)
        self.seconds = 0.0
        self.released = 0

    def finish(self) -> dict:  # raises before it could release: the server must
        if self.how == "store":
            raise StorageUnavailable("the store cannot be reached")
        raise RuntimeError("a bug")

    def unwoken(self) -> None:
        raise AssertionError("woken: finish() answers")

    def release(self) -> None:
        self.released += 1


class KnownAnswer:
    """A deferred request woken or not ("woken", "unwoken"), each answer saying who made it."""

    def __init__(self, how: str) -> None:
        self.waiter = _Wait(woken=how == "woken")
        self.seconds = 0.0
        self.threads: list[str] = []

    def finish(self) -> dict:
        self.threads.append(threading.current_thread().name)
        return {"by": "finish"}

    def unwoken(self) -> dict:
        self.threads.append(threading.current_thread().name)
        return {"by": "unwoken"}

    def release(self) -> None:
        pass


class Gate:
    """A WSGI app that answers what it was asked, in JSON; requests to /wait block until
    released (so a test can hold requests in progress)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.deferred: list[FailingAnswer | KnownAnswer] = []
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"].startswith("/known/"):
            known = KnownAnswer(environ["PATH_INFO"].removeprefix("/known/"))
            self.deferred.append(known)
            environ[deferral.ENVIRON_KEY](known)
            start_response("204 No Content", [])
            return [b""]
        if environ["PATH_INFO"].startswith("/defer/"):
            # Handed back to the server, like a held poll; its answer then fails.
            failing = FailingAnswer(environ["PATH_INFO"].removeprefix("/defer/"))
            self.deferred.append(failing)
            environ[deferral.ENVIRON_KEY](failing)
            start_response("204 No Content", [])
            return [b""]
        if environ["PATH_INFO"] == "/wait":
            with self._lock:
                self.waiting += 1
            self.release.wait(30)
        body = environ["wsgi.input"].read()
        answer = {
            "path": environ["PATH_INFO"],
            "body": len(body),
            "worker": environ.get("SSL_CLIENT_S_DN_CN"),
            "serial": environ.get("SSL_CLIENT_M_SERIAL"),
            "verify": environ.get("SSL_CLIENT_VERIFY"),
        }
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]


@pytest.fixture
def served(pki, request):
    """Both ports, serving Gates, with BOUNDS (or those a test changes: indirect params)."""
    server_ctx = []
    for require in (False, True):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["server"], pki["server_key"])
        if require:
            context.load_verify_locations(pki["ca"])
            context.verify_mode = ssl.CERT_REQUIRED
        server_ctx.append(context)
    public_app, agent_app = Gate(), Gate()
    public = bind_listener("public", "127.0.0.1", 0, 128)
    agent = bind_listener("agent", "127.0.0.1", 0, 128)
    metrics = Metrics()
    servers = Servers(
        PortSpec(public.sock, server_ctx[0], public_app, 8),
        PortSpec(agent.sock, server_ctx[1], agent_app, 8),
        dataclasses.replace(BOUNDS, **getattr(request, "param", {})),
        metrics,
        stop_timeout=2,
    )
    pending = AsyncioErrors()
    logging.getLogger("asyncio").addHandler(pending)
    servers.start()
    try:
        yield {
            "public": public.port,
            "agent": agent.port,
            "metrics": metrics,
            "apps": {"public": public_app, "agent": agent_app},
            "pki": pki,
        }
    finally:
        public_app.release.set()
        agent_app.release.set()
        try:
            servers.stop()
            public.close()
            agent.close()
            # Every task the loop ran ended with it: none is left for the garbage collector
            # to find pending (asyncio would log "Task was destroyed but it is pending!").
            del servers
            gc.collect()
        finally:
            logging.getLogger("asyncio").removeHandler(pending)
        assert pending.messages == []


class AsyncioErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0])


def counted(metrics: Metrics, name: str, port: str, cause: str) -> float:
    return metrics.registry.get_sample_value(name, {"port": port, "cause": cause}) or 0


def refused(metrics, port, cause) -> float:
    return counted(metrics, "cifleet_connections_refused_total", port, cause)


def handshake_failed(metrics, port, cause) -> float:
    return counted(metrics, "cifleet_tls_handshake_failures_total", port, cause)


def handshakes(metrics: Metrics, state: str, port: str = "agent") -> float:
    return metrics.registry.get_sample_value(
        "cifleet_tls_handshakes", {"port": port, "state": state}
    )


def context(pki, worker: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if worker:
        ctx.load_cert_chain(pki[worker], pki[f"{worker}_key"])
    return ctx


def tls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def get(port: int, ctx: ssl.SSLContext, path: str = "/x", body: bytes | None = None):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("POST" if body is not None else "GET", path, body=body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def closed_by_server(sock: socket.socket, within: float = 10) -> bool:
    """Whether the server closes (or resets) `sock` within `within` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_a_silent_client_costs_only_its_own_connection(served):
    silent = socket.create_connection(("127.0.0.1", served["agent"]), timeout=10)
    # Meanwhile others handshake and are served at once.
    assert get(served["agent"], context(served["pki"], "w1"))[0] == 200
    assert get(served["public"], context(served["pki"]))[0] == 200
    assert closed_by_server(silent)
    wait_for(lambda: handshake_failed(served["metrics"], "agent", "timeout") == 1, 10, "count")


# A TLS record header that promises a ClientHello which never comes: a hello has begun.
HELLO_BEGUN = b"\x16\x03\x01\x02\x00"


@pytest.mark.parametrize(
    "served", [{"handshakes_at_once": 1, "handshake_timeout": 30.0}], indirect=True
)
def test_a_silent_client_takes_no_handshake_turn(served):
    silent = socket.create_connection(("127.0.0.1", served["agent"]), timeout=10)
    # The port's one turn is free for a client that speaks: served long before the silent
    # one's deadline (30 s), which is never reached here.
    assert get(served["agent"], context(served["pki"], "w1"))[0] == 200
    assert handshake_failed(served["metrics"], "agent", "timeout") == 0
    silent.close()


@pytest.mark.parametrize("served", [{"handshakes_at_once": 1}], indirect=True)
def test_a_handshake_waits_for_its_turn(served):
    staller = socket.create_connection(("127.0.0.1", served["agent"]), timeout=10)
    staller.sendall(HELLO_BEGUN)  # takes the one turn, and holds it until its deadline
    wait_for(lambda: handshakes(served["metrics"], "in_turn") == 1, 10, "the staller's turn")
    # A client's wait for its turn shares its hello's deadline: a moment after the
    # staller's, its deadline comes after the staller's turn ends.
    time.sleep(0.2)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(get, served["agent"], context(served["pki"], "w1"))
        wait_for(lambda: handshakes(served["metrics"], "waiting") == 1, 10, "the next in line")
        # Served only once the staller's turn ended at its deadline, not beside it.
        assert waiting.result(timeout=30)[0] == 200
    assert handshake_failed(served["metrics"], "agent", "timeout") == 1
    assert closed_by_server(staller, within=0)
    assert handshakes(served["metrics"], "in_turn") == handshakes(served["metrics"], "waiting") == 0


@pytest.mark.parametrize(
    "served", [{"handshakes_at_once": 1, "handshake_timeout": 2.0}], indirect=True
)
def test_a_client_that_waits_past_the_deadline_for_its_turn_is_refused(served):
    # Two stalled hellos hold the one turn for a deadline each, one after the other: the
    # client behind them would get its turn only after two deadlines, so it is refused at
    # its own, before any TLS work. Half a deadline between the stallers puts the first
    # turn's end well before the second staller's deadline, and the client's well before
    # the second turn's end; asyncio's timers fire in that order however slow the loop.
    deadline = 2.0
    stallers = []
    for position in (1, 2):
        if position == 2:
            time.sleep(deadline / 2)
        staller = socket.create_connection(("127.0.0.1", served["agent"]), timeout=10)
        staller.sendall(HELLO_BEGUN)
        stallers.append(staller)
        wait_for(
            lambda n=position: (
                handshakes(served["metrics"], "in_turn") + handshakes(served["metrics"], "waiting")
                == n
            ),
            10,
            "the staller in line",
        )
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        get(served["agent"], context(served["pki"], "w1"))
    assert refused(served["metrics"], "agent", "no_handshake_turn") == 1
    assert handshakes(served["metrics"], "in_turn") == 1  # the second staller's, still
    wait_for(lambda: handshake_failed(served["metrics"], "agent", "timeout") == 2, 10, "both")
    for staller in stallers:
        assert closed_by_server(staller, within=0)


def test_handshakes_in_progress_are_bounded_per_address(served):
    silent = [socket.create_connection(("127.0.0.1", served["public"])) for _ in range(3)]
    try:
        extra = socket.create_connection(("127.0.0.1", served["public"]), timeout=10)
    except ConnectionResetError:
        pass  # refused so soon that the reset came before connect() returned (seen under load)
    else:
        assert closed_by_server(extra, within=0.9)  # before any handshake deadline
    wait_for(
        lambda: refused(served["metrics"], "public", "client_limit") == 1, 10, "the refusal counted"
    )
    for sock in silent:
        sock.close()


def test_open_connections_are_bounded_per_address_on_the_public_port(served):
    held = [tls(served["public"], context(served["pki"])) for _ in range(4)]
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        extra = tls(served["public"], context(served["pki"]))
        extra.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert extra.recv(1024) != b""  # refused: reset, so this raises or reads nothing
        raise ConnectionResetError
    wait_for(
        lambda: refused(served["metrics"], "public", "client_limit") == 1, 10, "the refusal counted"
    )
    for sock in held:
        sock.close()


def test_open_connections_are_bounded_per_worker_on_the_agent_port(served):
    pki = served["pki"]
    held = [tls(served["agent"], context(pki, "w1")) for _ in range(3)]
    extra = tls(served["agent"], context(pki, "w1"))  # TLS 1.3: the client is done first
    assert closed_by_server(extra)
    wait_for(
        lambda: refused(served["metrics"], "agent", "client_limit") == 1, 10, "the refusal counted"
    )
    # Another worker from the same address is served.
    status, answer = get(served["agent"], context(pki, "w2"))
    assert (status, answer["worker"], answer["verify"]) == (200, "w2", "SUCCESS")
    assert answer["serial"] and all(c in "0123456789ABCDEF" for c in answer["serial"])
    for sock in held:
        sock.close()


def test_one_workers_requests_in_progress_are_bounded(served):
    pki, app = served["pki"], served["apps"]["agent"]
    with_w1 = context(pki, "w1")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(get(served["agent"], with_w1, "/wait")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: app.waiting == 2, 10, "two requests in progress")
    status, answer = get(served["agent"], with_w1)
    assert (status, answer.get("code")) == (429, "too_many_requests"), answer
    assert get(served["agent"], context(pki, "w2"))[0] == 200  # another worker is not
    app.release.set()
    for thread in threads:
        thread.join(10)
    assert [status for status, _ in results] == [200, 200]
    wait_for(
        lambda: refused(served["metrics"], "agent", "client_limit") == 1, 10, "the refusal counted"
    )


def test_request_headers_have_a_deadline(served):
    sock = tls(served["public"], context(served["pki"]))
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    assert closed_by_server(sock)
    wait_for(
        lambda: refused(served["metrics"], "public", "read_deadline") == 1,
        10,
        "the refusal counted",
    )


def test_a_pipelined_requests_headers_are_bounded_by_the_idle_timeout(served):
    """The next request's first bytes, sent while the first is served, cannot be told from
    the first one's body: no header deadline of their own, but the keep-alive timeout closes
    the connection (a drip of them is not a way to hold it)."""
    sock = tls(served["public"], context(served["pki"]))
    sock.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    gate = served["apps"]["public"]
    wait_for(lambda: gate.waiting == 1, 10, "the first request in the app")
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n")  # the next one, never finished
    gate.release.set()
    sock.settimeout(10)
    answer = b""
    while not answer.endswith(b"\r\n0\r\n\r\n") and (data := sock.recv(4096)):
        answer += data  # the first request's whole (chunked) answer
    assert answer.startswith(b"HTTP/1.1 200")
    assert closed_by_server(sock)  # after --idle-timeout (2 s here), not the test's 10 s


def test_a_connection_without_a_request_is_closed_at_the_header_deadline(served):
    sock = tls(served["agent"], context(served["pki"], "w1"))
    assert closed_by_server(sock)
    wait_for(
        lambda: refused(served["metrics"], "agent", "read_deadline") == 1, 10, "the refusal counted"
    )


def test_an_idle_keep_alive_connection_is_closed(served):
    conn = http.client.HTTPSConnection(
        "127.0.0.1", served["public"], context=context(served["pki"]), timeout=10
    )
    conn.request("GET", "/x")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Connection") != "close"
    response.read()
    assert closed_by_server(conn.sock)  # after --idle-timeout with no request
    conn.close()


@pytest.mark.parametrize("port", ["public", "agent"])
def test_a_dripped_body_is_cut_off_with_408(served, port):
    ctx = context(served["pki"], "w1" if port == "agent" else None)
    sock = tls(served[port], ctx)
    sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 10)
    sock.settimeout(10)
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code": "request_timeout"' in answer
    wait_for(
        lambda: refused(served["metrics"], port, "read_deadline") == 1, 10, "the refusal counted"
    )
    assert served["apps"][port].waiting == 0


def test_a_body_that_comes_in_time_is_served_whole(served):
    status, answer = get(served["public"], context(served["pki"]), body=b"b" * 300_000)
    assert (status, answer["body"]) == (200, 300_000)
    # Larger than the agent port reads before the app runs: the app reads it as it comes.
    status, answer = get(served["agent"], context(served["pki"], "w1"), body=b"b" * 300_000)
    assert (status, answer["body"]) == (200, 300_000)


def test_a_held_request_whose_answer_fails_gets_the_apps_error_answer(served, caplog):
    """A held poll answered after the store went away gets 503 storage_unavailable, as any
    other request would, and a bug a 500 with the app's JSON; either way the hold is
    released and the connection goes on serving."""
    ctx = context(served["pki"], "w1")
    with caplog.at_level(logging.ERROR, "cifleet.primary"):
        assert get(served["agent"], ctx, "/defer/store") == (
            503,
            {"error": "the store cannot be reached", "code": "storage_unavailable"},
        )
        assert get(served["agent"], ctx, "/defer/bug") == (
            500,
            {"error": "internal error; see the primary's log", "code": "internal"},
        )
    assert [d.released for d in served["apps"]["agent"].deferred] == [1, 1]
    # The app's own records only: a task another test's server left to the garbage collector
    # would be asyncio's, not this answer's.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("cifleet")] == [
        "unhandled error in a held request's answer"
    ]
    assert get(served["agent"], ctx)[0] == 200


def test_a_deferred_request_nothing_woke_is_answered_on_the_loop(served):
    """An idle agent's held poll that ends at its timeout is answered without a service
    thread (and its store queries); a woken one by finish(), in a service thread."""
    ctx = context(served["pki"], "w1")
    assert get(served["agent"], ctx, "/known/unwoken") == (200, {"by": "unwoken"})
    assert get(served["agent"], ctx, "/known/woken") == (200, {"by": "finish"})
    unwoken, woken = served["apps"]["agent"].deferred
    assert unwoken.threads == ["servers"]  # the event loop's thread (primary/server/loop.py)
    assert len(woken.threads) == 1 and woken.threads != ["servers"]


@pytest.mark.parametrize("served", [{"body_memory": 100_000}], indirect=True)
def test_the_request_bodies_a_port_holds_in_memory_are_bounded(served):
    port, ctx, metrics = served["public"], context(served["pki"]), served["metrics"]

    def held() -> float:
        return metrics.registry.get_sample_value(
            "cifleet_request_body_bytes_held", {"port": "public"}
        )

    # A declares 80,000 bytes and sends them slowly: the room is taken while it reads.
    slow = tls(port, ctx)
    slow.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 80000\r\n\r\n" + b"a" * 1000)
    wait_for(lambda: held() == 80_000, 10, "the slow body's room taken")
    # 50,000 more do not fit: that request waits, then is told to retry, while A goes on
    # sending within its deadline.
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(get, port, ctx, "/x", b"b" * 50_000)
        sent = 1000
        while not wait([other], 0.2).done:  # each piece moves A's deadline 2 s on
            slow.sendall(b"a" * 2000)
            sent += 2000
            assert sent < 80_000, "the other request was never answered"
        assert other.result() == (
            503,
            {"error": "the primary holds as many request bodies as it may; retry", "code": "busy"},
        )
    assert refused(metrics, "public", "body_memory") == 1
    # A's body completes and is served; its room is given back, and the other fits now.
    slow.sendall(b"a" * (80_000 - sent))
    slow.settimeout(10)
    answer = b""
    while not answer.endswith(b"\r\n0\r\n\r\n") and (data := slow.recv(4096)):
        answer += data
    assert answer.startswith(b"HTTP/1.1 200") and b'"body": 80000' in answer
    wait_for(lambda: held() == 0, 10, "the room given back")
    assert get(port, ctx, "/x", b"b" * 50_000)[1]["body"] == 50_000
    slow.close()


@pytest.mark.parametrize("port", ["public", "agent"])
def test_an_oversized_header_is_refused_and_counted_as_too_large(served, port):
    worker = "w1" if port == "agent" else None
    sock = tls(served[port], context(served["pki"], worker))
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
    sock.settimeout(10)
    assert sock.recv(4096).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    assert closed_by_server(sock)
    assert refused(served["metrics"], port, "too_large") == 1
    assert refused(served["metrics"], port, "other") == 0
    garbled = tls(served[port], context(served["pki"], worker))
    garbled.sendall(b"NOT HTTP AT ALL\r\n\r\n")
    garbled.settimeout(10)
    assert garbled.recv(4096).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    wait_for(lambda: refused(served["metrics"], port, "other") == 1, 10, "the refusal counted")


@pytest.mark.parametrize("port", ["public", "agent"])
def test_a_client_gone_mid_body_gets_no_log_line(served, port, caplog):
    worker = "w1" if port == "agent" else None
    ctx, metrics = context(served["pki"], worker), served["metrics"]

    def held() -> float:
        return metrics.registry.get_sample_value("cifleet_request_body_bytes_held", {"port": port})

    gone = tls(served[port], ctx)
    gone.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
    wait_for(lambda: held() == 1000, 10, "its body's room taken")
    gone.close()
    wait_for(lambda: held() == 0, 10, "its room given back")
    # A later request is served after the loop has finished with the one that went away.
    assert get(served[port], ctx)[0] == 200
    assert [r.getMessage() for r in caplog.records if r.name.startswith("cifleet")] == []


@pytest.mark.parametrize("port", ["public", "agent"])
def test_a_client_gone_before_its_answer_gets_no_log_line(served, port, caplog):
    worker = "w1" if port == "agent" else None
    ctx, app = context(served["pki"], worker), served["apps"][port]
    gone = tls(served[port], ctx)
    gone.sendall(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_for(lambda: app.waiting == 1, 10, "its request in the app")
    gone.close()
    app.release.set()  # the answer now goes to a connection that is gone
    wait_for(lambda: get(served[port], ctx)[0] == 200, 10, "a later request served")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("cifleet")] == []
