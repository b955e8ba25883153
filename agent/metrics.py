"""`cifleet-agent run --metrics-listen ADDR`: a few gauges and counters of this agent in the
Prometheus text format, on plain HTTP (like gitlab-runner's `listen_address`; off unless
asked for).

Written by hand rather than with prometheus_client: the agent runs on every worker host
and installs from a wheelhouse, ten values need no library, and the primary's tests parse
this output with prometheus_client and have a real Prometheus scrape it.

The listener is bounded, so no client can stall it or the agent: at most MAX_CLIENTS
connections at once (more are closed at once), each with DEADLINE_SECONDS for its whole
request and answer, a request of at most MAX_REQUEST_BYTES, one request per connection.
"""

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_CLIENTS = 4
DEADLINE_SECONDS = 5.0
MAX_REQUEST_BYTES = 8192
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[!-~]*) HTTP/1\.[01]")
# How a run held by this agent ended here (RunHandle.outcome): a bounded label set.
RUN_OUTCOMES = ("delivered", "taken_back", "fenced", "refused", "stopped")


@dataclass(frozen=True)
class Snapshot:
    """What the agent knows of itself at one moment (Agent.snapshot)."""

    worker: str
    version: str
    slots: int
    slots_used: int
    jobs_running: int
    spool_backlog_bytes: int
    last_contact: float | None  # Unix time of the last poll the primary answered
    draining: bool
    fence_events: int
    runs_ended: dict[str, int] = field(default_factory=dict)


def render(s: Snapshot) -> bytes:
    """The Prometheus text format (version 0.0.4) of a snapshot."""
    families = [
        ("cifleet_agent_info", "gauge", "Always 1; this agent's worker name and version.",
         [({"worker": s.worker, "version": s.version}, 1)]),
        ("cifleet_agent_slots", "gauge", "Runs this agent may hold at once.", [({}, s.slots)]),
        ("cifleet_agent_slots_used", "gauge", "Runs holding a slot now.", [({}, s.slots_used)]),
        ("cifleet_agent_jobs_running", "gauge", "Jobs whose steps run now.",
         [({}, s.jobs_running)]),
        ("cifleet_agent_spool_backlog_bytes", "gauge",
         "Spooled job output the primary has not acknowledged yet.",
         [({}, s.spool_backlog_bytes)]),
        ("cifleet_agent_last_contact_timestamp_seconds", "gauge",
         "When the primary last answered a poll (Unix time; 0: not yet).",
         [({}, s.last_contact or 0)]),
        ("cifleet_agent_draining", "gauge", "1 while the agent takes no new runs.",
         [({}, int(s.draining))]),
        ("cifleet_agent_fence_events_total", "counter",
         "Runs this agent stopped because it could not reach the primary.",
         [({}, s.fence_events)]),
        ("cifleet_agent_runs_ended_total", "counter",
         "Runs this agent let go of, by how they ended here.",
         [({"outcome": o}, s.runs_ended.get(o, 0)) for o in RUN_OUTCOMES]),
    ]  # fmt: skip
    lines = []
    for name, kind, help_text, samples in families:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return ("\n".join(lines) + "\n").encode()


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def parse_listen(addr: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT", "[IPV6]:PORT" or ":PORT" (every interface)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, [IPV6]:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:9252")
    return host, int(port)


def bind(addr: str) -> socket.socket:
    """The listening socket for `addr` (ValueError for a bad address, OSError if taken)."""
    host, port = parse_listen(addr)
    if not host and socket.has_dualstack_ipv6():
        return socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True)
    return socket.create_server((host, port))


class MetricsServer:
    """Serves GET /metrics on a bound socket from a thread, until close()."""

    def __init__(
        self,
        sock: socket.socket,
        snapshot: Callable[[], Snapshot],
        max_clients: int = MAX_CLIENTS,
        deadline: float = DEADLINE_SECONDS,
    ) -> None:
        self._sock = sock
        self._snapshot = snapshot
        self._clients = threading.BoundedSemaphore(max_clients)
        self._deadline = deadline
        self._thread = threading.Thread(target=self._accept, name="metrics", daemon=True)

    @property
    def address(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def start(self) -> "MetricsServer":
        self._thread.start()
        log.info("metrics at http://%s/metrics", self.address)
        return self

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        self._sock.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if not self._clients.acquire(blocking=False):
                conn.close()  # as many clients as it may serve: this one is not waited for
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                deadline = time.monotonic() + self._deadline
                request = _read_request(conn, deadline)
                if request is not None:
                    _send(conn, self._answer(request), deadline)
                conn.shutdown(socket.SHUT_WR)  # the answer goes out before the close
        except OSError:
            pass  # the client went away or ran out of time
        except Exception:
            log.exception("metrics: cannot answer a scrape")
        finally:
            self._clients.release()

    def _answer(self, request: bytes) -> bytes:
        match = _REQUEST_LINE.fullmatch(request)
        if match is None:
            return _response(400, b"bad request\n")
        method, target = match.group(1), match.group(2)
        if method not in (b"GET", b"HEAD"):
            return _response(405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
        if target.partition(b"?")[0] != b"/metrics":
            return _response(404, b"not found: the metrics are at /metrics\n")
        body = render(self._snapshot())
        return _response(200, body, CONTENT_TYPE.encode(), head=method == b"HEAD")


def _read_request(conn: socket.socket, deadline: float) -> bytes | None:
    """The request line, once the whole head has come; None when it is too large."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_REQUEST_BYTES:
            _send(conn, _response(431, b"request too large\n"), deadline)
            return None
        conn.settimeout(max(deadline - time.monotonic(), 0.001))
        piece = conn.recv(4096)
        if not piece:
            return None
        data += piece
    return data.split(b"\n", 1)[0].rstrip(b"\r")


def _send(conn: socket.socket, data: bytes, deadline: float) -> None:
    conn.settimeout(max(deadline - time.monotonic(), 0.001))
    conn.sendall(data)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
}


def _response(
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: bytes = b"",
    head: bool = False,
) -> bytes:
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n".encode()
        + b"Content-Type: "
        + content_type
        + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
    )
    return header if head else header + body
