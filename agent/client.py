"""A small HTTPS client on http.client: one persistent connection, used by one thread.

Every thread that talks to the primary owns its own Client, so no connection is ever shared
between threads; abort() is the one method another thread may call.
"""

import contextlib
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import __version__
from agent.primaries import Primaries

REQUEST_TIMEOUT_SECONDS = 30.0
# An idle poll waits minutes for its answer (protocol.IDLE_POLL_MAX_HOLD_SECONDS). TCP
# keep-alive probes this often find a primary whose host is gone after four of them, long
# before the read timeout; the primary's own probes hear this host (the same way).
KEEPALIVE_SECONDS = 10
KEEPALIVE_PROBES = 3
USER_AGENT = f"cifleet-agent/{__version__}"

# Errors that mean "the server closed a reused keep-alive connection before answering":
# the request never reached the application, so one retry on a fresh connection is safe.
_STALE_CONNECTION_ERRORS = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class TransportError(Exception):
    """The request got no HTTP answer (refused, DNS, TLS, timeout, reset)."""


@dataclass
class Response:
    status: int
    body: bytes

    def json(self) -> dict[str, Any]:
        """The JSON object in the body, or {} when the body is not one."""
        try:
            data = json.loads(self.body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def code(self) -> str:
        return str(self.json().get("code", ""))

    @property
    def message(self) -> str:
        data = self.json()
        return str(data.get("error") or self.body[:200].decode("utf-8", "replace")).strip()


def agent_context(home: Path) -> ssl.SSLContext:
    """TLS for the agent port: verify the primary against the fleet CA, present our cert."""
    ctx = ssl.create_default_context(cafile=str(home / "ca.pem"))
    ctx.load_cert_chain(str(home / "worker.crt"), str(home / "worker.key"))
    return ctx


ContextSource = ssl.SSLContext | Callable[[], ssl.SSLContext]


def _split(base_url: str) -> tuple[str, int, str]:
    url = urllib.parse.urlsplit(base_url)
    if url.scheme != "https" or not url.hostname:
        raise ValueError(f"not an https URL: {base_url!r}")
    return url.hostname, url.port or 443, url.path.rstrip("/")


class Client:
    def __init__(
        self,
        base_url: str | Primaries,
        context: ContextSource,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        """`context` may be a function returning the current context: after a certificate
        renewal the next request reconnects with the new one. `base_url` may be the fleet's
        Primaries: each connect goes to the current one, and a request that gets no answer
        moves them all to another (agent.primaries)."""
        self._primaries = base_url if isinstance(base_url, Primaries) else None
        if self._primaries is None:
            _split(base_url)  # ValueError now, not at the first request
        self._base_url = base_url if isinstance(base_url, str) else None
        self._conn_url: str | None = None
        self._context_source = context if callable(context) else (lambda: context)
        self._conn_context: ssl.SSLContext | None = None
        self._timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None
        self._reused = False
        self._aborts = 0  # abort() calls so far: an aborted request is not retried
        self._shut = False  # shut(): no request goes out any more
        self._lock = threading.Lock()  # guards _conn against abort() from another thread

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        timeout: float | None = None,
        unless_aborted_since: int | None = None,
    ) -> Response:
        """Send one request; raise TransportError when no HTTP answer came back.
        `unless_aborted_since`: an `abort_count` read before the request was made; an
        abort() since then refuses it (TransportError), as it would break it in flight."""
        headers = {"Content-Type": content_type, "User-Agent": USER_AGENT}
        aborts = self._aborts if unless_aborted_since is None else unless_aborted_since
        for attempt in (1, 2):
            conn, reused, url = self._connection()
            prefix = _split(url)[2]
            try:
                # The connect timeout is the one given at construction; this sets the read one.
                if conn.sock is None:
                    conn.connect()
                    keep_alive(conn.sock)
                with self._lock:
                    # shut() or abort() while connecting, or before this request, found no
                    # socket of it to break: this check does. After it, they find this
                    # socket, so the read below sees the end.
                    shut = self._shut
                    aborted = unless_aborted_since is not None and self._aborts != aborts
                if shut:
                    raise TransportError("the client was shut")
                if aborted:
                    self.close()  # abort() may have broken this kept connection's socket
                    raise TransportError("the request was aborted before it was sent")
                conn.sock.settimeout(timeout or self._timeout)
                conn.request(method, prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE_CONNECTION_ERRORS as e:
                self.close()
                if reused and attempt == 1 and aborts == self._aborts:
                    continue
                self._unanswered(url, aborts)
                raise TransportError(_describe(e)) from e
            except (OSError, http.client.HTTPException) as e:
                self.close()
                self._unanswered(url, aborts)
                raise TransportError(_describe(e)) from e
            if resp.will_close:
                self.close()
            else:
                self._reused = True
            return Response(resp.status, data)
        raise AssertionError("unreachable")

    def post_json(
        self,
        path: str,
        payload: dict[str, Any],
        timeout: float | None = None,
        unless_aborted_since: int | None = None,
    ) -> Response:
        return self.request(
            "POST",
            path,
            json.dumps(payload).encode(),
            timeout=timeout,
            unless_aborted_since=unless_aborted_since,
        )

    def close(self) -> None:
        with self._lock:
            conn, self._conn, self._reused = self._conn, None, False
        if conn is not None:
            conn.close()

    @property
    def aborted(self) -> bool:
        return self._aborts > 0

    @property
    def abort_count(self) -> int:
        """abort() calls so far: read it before making a request (its body, say), pass it
        as `unless_aborted_since`, and an abort in between is not missed."""
        return self._aborts

    def abort(self) -> None:
        """Break a request in flight (from another thread), e.g. a long poll on shutdown."""
        with self._lock:
            self._aborts += 1
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            # socket.socket.shutdown, not SSLSocket's: it must not touch the TLS state the
            # blocked thread is using; the read just sees end-of-file.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def shut(self) -> None:
        """Break a request in flight and send no other (from another thread): for a
        shutdown, where an abort() that came between two requests would miss the second."""
        with self._lock:
            self._shut = True
        self.abort()

    def _unanswered(self, url: str, aborts: int) -> None:
        """No answer from `url`: unless we broke the request ourselves (abort()), the
        agent tries another primary next."""
        if self._primaries is not None and aborts == self._aborts:
            self._primaries.failed(url)

    def _connection(self) -> tuple[http.client.HTTPSConnection, bool, str]:
        context = self._context_source()
        url = self._primaries.current() if self._primaries is not None else self._base_url
        with self._lock:
            if self._shut:
                raise TransportError("the client was shut")
            if self._conn is not None and (
                self._conn_context is not context or self._conn_url != url
            ):
                # Made with an older certificate, or to a primary the agent moved away
                # from: reconnect with the new one.
                self._conn.close()
                self._conn = None
            if self._conn is None:
                host, port, _ = _split(url)
                self._conn = http.client.HTTPSConnection(
                    host, port, context=context, timeout=self._timeout
                )
                self._conn_context = context
                self._conn_url = url
                self._reused = False
            return self._conn, self._reused, url


class ClientPool:
    """Warm connections to the primary, lent to one thread at a time.

    A new run borrows an idle connection instead of paying a mutual-TLS handshake, which is
    most of the time from assignment to first step. Connections the server closed while
    idle are caught by Client's one retry on a fresh connection.
    """

    def __init__(self, base_url: str | Primaries, context: ContextSource, keep: int = 8) -> None:
        self._base_url = base_url
        self._context = context
        self._keep = keep
        self._idle: list[Client] = []
        self._lock = threading.Lock()
        self._closed = False

    def acquire(self) -> Client:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return Client(self._base_url, self._context)

    def release(self, client: Client) -> None:
        """Take a client back; one that was aborted, or one too many, is closed."""
        if not client.aborted:
            with self._lock:
                if not self._closed and len(self._idle) < self._keep:
                    self._idle.append(client)
                    return
        client.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle, self._closed = self._idle, [], True
        for client in idle:
            client.close()


def post_to_any(
    config: dict, context, path: str, body: dict, timeout: float | None = None
) -> Response:
    """POST to the first of the agent's primaries (config.json: the registered one, then
    those it learned) that answers: for one-off commands (`check`, `update-worker`), which
    must work while the registered primary is down. Raises the last TransportError."""
    primaries = Primaries([config["agent_url"]], config.get("agent_urls"))
    client = Client(primaries, context, **({"timeout": timeout} if timeout else {}))
    try:
        for tries_left in range(len(primaries.urls()) - 1, -1, -1):
            try:
                return client.post_json(path, body)
            except TransportError:
                if not tries_left:
                    raise
        raise AssertionError("unreachable")
    finally:
        client.close()


def keep_alive(sock: socket.socket, interval: int = KEEPALIVE_SECONDS) -> None:
    """Probe the peer after `interval` seconds of silence, then as often, and give up on
    the connection after KEEPALIVE_PROBES unanswered probes. Both ends do it: the primary's
    agent port too (primary/server/tcp.py). A socket that is closed meanwhile is left be."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def _describe(e: BaseException) -> str:
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {e.verify_message or e}"
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, socket.gaierror):
        return f"name resolution failed: {e.strerror or e}"
    return str(e) or type(e).__name__
