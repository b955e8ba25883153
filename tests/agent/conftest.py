"""Fixtures for the agent's tests: a throw-away PKI and a small fake primary speaking the
agent protocol over real (mutual) TLS on loopback."""

import contextlib
import datetime
import hashlib
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from ports import reserve_port

from agent.protocol import CODE_LOG_GAP, CODE_LOG_INCOMPLETE, CODE_STALE_ATTEMPT, NAME_RE


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Pki:
    """A CA that can issue server and client certificates."""

    def __init__(self, name: str = "test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            self._builder(subject, self.key.public_key(), subject)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _pem(self.cert)

    def _builder(self, subject, public_key, issuer):
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, cn: str, public_key, server: bool) -> bytes:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = self._builder(subject, public_key, self.cert.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), True
        )
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False
            )
        return _pem(builder.sign(self.key, hashes.SHA256()))

    def server_files(self, directory: Path) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert, keyfile = directory / "server.crt", directory / "server.key"
        cert.write_bytes(self.issue("localhost", key.public_key(), server=True))
        keyfile.write_bytes(_key_pem(key))
        return cert, keyfile

    def issue_for_csr(self, csr_pem: str, worker_id: str) -> bytes:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        return self.issue(worker_id, csr.public_key(), server=False)


@pytest.fixture(scope="session")
def pki() -> Pki:
    return Pki()


class FakePrimary:
    """Enough of the primary for the agent: register, poll, start, prepare, static files,
    log, status, finish, and the worker's own record.

    Tests steer it through its attributes (assignments, cancels, stale, down, ...) and
    inspect what arrived (polls, logs, statuses, finished).
    """

    def __init__(self, pki: Pki, directory: Path, mutual: bool = True, hold: float = 0.3) -> None:
        self.pki = pki
        self.hold = hold
        self.lock = threading.Condition()
        self.assignments: list[dict] = []
        self.cancels: set[tuple[int, int]] = set()
        self.stale: set[tuple[int, int]] = set()
        self.unknown_worker = False
        self.down = False  # answer 503 to everything
        self.register_answer: tuple[int, dict] | None = None
        self.secret = "s3cret"
        self.registrations: list[dict] = []
        self.polls: list[dict] = []
        self.poll_times: list[float] = []  # time.monotonic() of each poll's arrival
        self.assigning_polls: list[int] = []  # indexes in polls of those answered with work
        self.calls: list[str] = []
        self.logs: dict[tuple[int, str], bytearray] = {}
        self.statuses: dict[tuple[int, str], list[dict]] = {}
        self.started: list[int] = []
        self.start_requests: list[int] = []  # starts that arrived, answered or not
        # When set to an Event, a start is answered only once it is set (a slow primary).
        self.start_gate: threading.Event | None = None
        self.finished: list[int] = []
        self.prepares: dict[int, list[dict]] = {}
        self.files: dict[str, bytes] = {}  # static files served, by path
        self.file_requests: list[tuple[int, int, str]] = []  # (run_id, attempt, path)
        self.file_error: tuple[int, dict] | None = None  # the answer to file requests, if set
        self.slots: int | None = None  # the poll answer's "slots", when set
        self.poll_after: float | None = None  # the poll answer's "poll_after", when set
        self.heartbeat_timeout: float | None = None  # the poll answer's, when set
        # Workspaces this worker is no longer the home of: the answer lists those the
        # poll reported, as the primary recomputes it on every poll.
        self.not_home: set[str] = set()
        self.worker = {
            "id": "w-1",
            "name": "test-worker",
            "state": "active",
            "tags": [],
            "slots": 2,
            "draining": False,
        }
        self.worker_requests: list[dict] = []
        self.worker_error: tuple[int, dict] | None = None  # the answer to the next update
        cert, key = pki.server_files(directory)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if mutual:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cadata=pki.pem.decode())
        # Held until close(): a restart (stop(), then start()) finds the port free, and the
        # agent, which knows it, finds the fake primary there again.
        self._ports = reserve_port()
        self.port = self._ports.port
        self.server: ThreadingHTTPServer | None = None
        self.connections: set = set()
        self.accepted = 0  # connections accepted so far (each a TLS handshake)
        # Like the primary: keep telling the agent to cancel a run it finished until the
        # agent's polls stop listing it; and hold each finish answer back this long.
        self.cancel_finished = False
        self.finish_delay = 0.0
        self.start()

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # agents hang up on purpose
        server.socket = self.context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        """Go away completely: connections are refused until start()."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.drop_connections()

    def close(self) -> None:
        """Stop for good and give the port back."""
        self.stop()
        self._ports.close()

    def drop_connections(self) -> None:
        """Hang up on every open connection, like a server closing idle keep-alives."""
        with self.lock:
            conns, self.connections = self.connections, set()
        for conn in conns:  # keep-alive connections too: a real outage drops them
            with contextlib.suppress(OSError):
                socket.socket.shutdown(conn, socket.SHUT_RDWR)

    def log(self, run_id: int, job: str) -> bytes:
        with self.lock:
            return bytes(self.logs.get((run_id, job), b""))

    def states(self, run_id: int, job: str) -> list[str]:
        with self.lock:
            return [s["state"] for s in self.statuses.get((run_id, job), [])]

    def poll_after_assignments(self, timeout: float = 10.0) -> dict:
        """The poll that followed the last answer with assignments: the runs it lists are
        the ones the agent took."""
        self.wait_for(
            lambda: self.assigning_polls and len(self.polls) > self.assigning_polls[-1] + 1,
            timeout,
        )
        with self.lock:
            return self.polls[self.assigning_polls[-1] + 1]

    def wait_for(self, predicate, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the fake primary")
            time.sleep(0.02)

    # -- request handling (runs on the server's threads)

    def handle(self, path: str, query: dict, body: bytes) -> tuple[int, dict | bytes]:
        with self.lock:
            self.calls.append(path)
        if self.down:
            return 503, {"error": "down", "code": "unavailable"}
        if path == "/api/v1/workers/register":
            return self._register(json.loads(body))
        if self.unknown_worker:
            return 403, {"error": "unknown worker", "code": "unknown_worker"}
        if path == "/agent/v1/poll":
            return self._poll(json.loads(body))
        if path == "/agent/v1/worker":
            return self._update_worker(json.loads(body))
        m = re.fullmatch(r"/agent/v1/runs/(\d+)/files/(.+)", path)
        if m:
            return self._file(int(m.group(1)), int(query["attempt"][0]), unquote(m.group(2)))
        m = re.fullmatch(
            r"/agent/v1/runs/(\d+)/(start|prepare|finish|jobs/([^/]+)/(log|status))", path
        )
        if not m:
            return 404, {"error": "no such path", "code": "not_found"}
        run_id, job = int(m.group(1)), m.group(3)
        attempt = int(query["attempt"][0]) if m.group(4) == "log" else json.loads(body)["attempt"]
        if m.group(2) == "start":
            with self.lock:
                self.start_requests.append(run_id)
            if self.start_gate is not None:
                self.start_gate.wait(30)
        with self.lock:
            if (run_id, attempt) in self.stale:
                return 409, {"error": "stale", "code": CODE_STALE_ATTEMPT}
            if m.group(2) == "start":
                self.started.append(run_id)
                return 200, {"state": "running"}
            if m.group(2) == "prepare":
                notes = json.loads(body)
                first_job = notes.pop("job_started", None)
                self.prepares.setdefault(run_id, []).append(notes)
                if first_job is not None:  # its running status came with the notes
                    self.statuses.setdefault((run_id, first_job), []).append(
                        {"attempt": attempt, "state": "running"}
                    )
                return 200, {}
            if m.group(2) == "finish":
                last_job = json.loads(body).get("job")
                if last_job is not None:  # its final status came with finish
                    status = {k: v for k, v in last_job.items() if k != "name"}
                    code, answer = self._status(run_id, last_job["name"], attempt, status)
                    if code != 200:
                        return code, answer
                self.finished.append(run_id)
                return 200, {"state": "success"}
            stored = self.logs.setdefault((run_id, job), bytearray())
            if m.group(4) == "log":
                offset = int(query["offset"][0])
                if offset > len(stored):
                    return 416, {"error": "gap", "code": CODE_LOG_GAP, "size": len(stored)}
                stored[offset:] = body  # bytes it already has are the same bytes
                return 200, {"size": len(stored)}
            status = json.loads(body)
            del status["attempt"]
            return self._status(run_id, job, attempt, status)

    def _status(self, run_id: int, job: str, attempt: int, status: dict) -> tuple[int, dict]:
        """A job status, sent on its own or with prepare or finish (under self.lock)."""
        stored = self.logs.setdefault((run_id, job), bytearray())
        if "log_size" in status and status["log_size"] > len(stored):
            return 409, {"error": "incomplete", "code": CODE_LOG_INCOMPLETE, "size": len(stored)}
        self.statuses.setdefault((run_id, job), []).append({"attempt": attempt, **status})
        return 200, {"state": status["state"]}

    def _poll(self, body: dict) -> tuple[int, dict]:
        deadline = time.monotonic() + (self.hold if body.get("wait") else 0)
        with self.lock:
            self.poll_times.append(time.monotonic())
            self.polls.append(body)
            index = len(self.polls) - 1
            while True:
                held = {(r["run_id"], r["attempt"]) for r in body["runs"]}
                gone = held & self.cancels
                if self.cancel_finished:
                    gone |= {(r, a) for r, a in held if r in self.finished}
                cancel = [{"run_id": r, "attempt": a} for r, a in sorted(gone)]
                if self.assignments or cancel or time.monotonic() >= deadline:
                    assignments, self.assignments = self.assignments, []
                    if assignments:
                        self.assigning_polls.append(index)
                    answer = {"assignments": assignments, "cancel": cancel}
                    answer["delete_workspaces"] = sorted(
                        self.not_home & set(body.get("workspaces", []))
                    )
                    if self.slots is not None:
                        answer["slots"] = self.slots
                    if self.poll_after is not None:
                        answer["poll_after"] = self.poll_after
                    if self.heartbeat_timeout is not None:
                        answer["heartbeat_timeout"] = self.heartbeat_timeout
                    return 200, answer
                self.lock.wait(0.02)

    def _file(self, run_id: int, attempt: int, path: str) -> tuple[int, dict | bytes]:
        with self.lock:
            self.file_requests.append((run_id, attempt, path))
            if self.file_error is not None:
                return self.file_error
            if (run_id, attempt) in self.stale:
                return 409, {"error": "stale", "code": CODE_STALE_ATTEMPT}
            if path not in self.files:
                return 404, {"error": f"no static file {path}", "code": "not_found"}
            return 200, self.files[path]

    def _update_worker(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.worker_requests.append(body)
            if self.worker_error is not None:
                return self.worker_error
            if "slots" in body and body["slots"] not in range(1, 65):
                return 400, {"error": "slots must be 1..64", "code": "bad_request"}
            if "tags" in body and not all(NAME_RE.match(t) for t in body["tags"]):
                return 400, {"error": "bad tag", "code": "bad_request"}
            self.worker.update(body)
            return 200, dict(self.worker)

    def _register(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.registrations.append(body)
        if self.register_answer is not None:
            return self.register_answer
        if body.get("secret") != self.secret:
            return 401, {"error": "bad secret", "code": "bad_secret"}
        cert = self.pki.issue_for_csr(body["csr"], "w-1")
        return 201, {
            "worker_id": "w-1",
            "certificate": cert.decode(),
            "ca_certificate": self.pki.pem.decode(),
            "agent_url": f"https://localhost:{self.port + 1}",
        }


def _handler(fake: FakePrimary):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with fake.lock:
                fake.connections.add(self.connection)
                fake.accepted += 1

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, answer = fake.handle(url.path, parse_qs(url.query), body)
            if url.path.endswith("/finish"):
                time.sleep(fake.finish_delay)
            self.send_response(status)
            if isinstance(answer, bytes):  # a static file
                data = answer
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("X-Sha256", hashlib.sha256(data).hexdigest())
            else:
                data = json.dumps(answer).encode()
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST

        def log_message(self, *args) -> None:
            pass

    return Handler


@pytest.fixture
def public_primary(pki, tmp_path):
    """A fake primary's public port: server TLS only, for registration."""
    directory = tmp_path / "public-primary"
    directory.mkdir()
    fake = FakePrimary(pki, directory, mutual=False)
    yield fake
    fake.close()


@pytest.fixture(scope="session")
def other_ca_pem() -> bytes:
    """The certificate of a CA that signed nothing the tests trust."""
    return Pki("other CA").pem


@pytest.fixture
def fake_primary(pki, tmp_path):
    fake = FakePrimary(pki, tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def agent_home(pki, fake_primary, tmp_path) -> Path:
    """A registered agent home pointing at fake_primary."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    (home / "worker.key").write_bytes(_key_pem(key))
    (home / "worker.crt").write_bytes(pki.issue("w-1", key.public_key(), server=False))
    (home / "ca.pem").write_bytes(pki.pem)
    (home / "config.json").write_text(
        json.dumps(
            {
                "worker_id": "w-1",
                "name": "test-worker",
                "tags": [],
                "slots": 2,
                "primary_url": "https://localhost:1",
                "agent_url": fake_primary.url,
            }
        )
    )
    return home


@pytest.fixture
def running_agent(agent_home):
    """Start Agent(agent_home).run() in a thread; every agent started is stopped at the end."""
    from agent.worker import Agent

    agents = []

    def start(**kw):
        agent = Agent(agent_home, kill_grace=1.0, **kw)
        t = threading.Thread(target=agent.run, daemon=True)
        t.start()
        agents.append((agent, t))
        return agent, t

    yield start
    for agent, t in agents:
        agent.stop.set()
        t.join(10)
