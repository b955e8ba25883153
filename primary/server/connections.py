"""One port's connections: accepted here, admitted or refused before any TLS work, each
TLS handshake on the event loop with its own deadline, then handed to aiohttp's HTTP/1.1
protocol with a deadline for every request's headers.

Admission happens on the accepted socket, before the handshake, because the handshake is
what an anonymous client can make the primary spend: a connection past a bound is closed
at once and costs a file descriptor for microseconds. The bounds (bounds.ServerBounds):
connections per listener, TLS handshakes in progress per source address (the connections
nobody has authenticated yet), open connections per source address (public port), open
connections per worker certificate (agent port, checked once the handshake says who it
is). Handshakes run concurrently, up to `handshakes_at_once` per port, each with its own
deadline; a client takes a turn only once its TLS hello is here, so a silent one costs
only its own connection, for at most the handshake deadline, and a fleet reconnecting at
once is handshaked in turns fast enough for each to meet its deadline.

Every refusal is counted (`metrics.connection_refused`, `metrics.handshake_failed`) and
gets at most one rate-limited log line (bounds.RefusalLog), never a traceback.
"""

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from asyncio import sslproto
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from primary.metrics.causes import handshake_cause
from primary.metrics.instruments import Metrics
from primary.server.bounds import Counts, RefusalLog, ServerBounds, source_key
from primary.server.tcp import keep_alive

log = logging.getLogger("cifleet.primary")
# After an accept() that failed for want of file descriptors, wait this long before the next:
# the kernel keeps the waiting connections in the backlog meanwhile.
ACCEPT_RETRY_SECONDS = 0.1


class ServedConnection(RequestHandler):
    """aiohttp's HTTP/1.1 connection, plus admission once the handshake is done (`admit`), a
    deadline for each request's line and headers (from the handshake, and from the first
    byte of every later request) and a callback when the connection closes. aiohttp's
    keep-alive timeout closes it when idle."""

    def __init__(
        self,
        manager: web.Server,
        *,
        loop: asyncio.AbstractEventLoop,
        header_timeout: float,
        on_header_deadline: Callable[[], None],
        on_closed: Callable[[], None],
        admit: Callable[[asyncio.BaseTransport], bool],
        on_bad_request: Callable[[str], None] = lambda cause: None,
        **kwargs,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._on_bad_request = on_bad_request
        self._event_loop = loop
        self._header_timeout = header_timeout
        self._on_header_deadline = on_header_deadline
        self._on_closed = on_closed
        self._admit = admit
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._lost: asyncio.Future | None = None
        # Agent port: the worker id its certificate names (set once the handshake is done).
        self.worker: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called once the TLS handshake is done, before any request is read: admitted here,
        # so no request of a refused connection ever starts.
        super().connection_made(transport)
        if not self._admit(transport):
            self.force_close()
            return
        self.worker, _ = peer_worker(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if not self._in_request and self._header_timer is None:
            self._arm_header_timer()
        super().data_received(data)

    def lost(self) -> asyncio.Future:
        """A future done once the connection has closed (a held request waits on it too:
        aiohttp does not end a handler whose client has gone)."""
        if self._lost is None:
            self._lost = self._event_loop.create_future()
            if self.transport is None:
                self._lost.set_result(None)
        return self._lost

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        try:
            super().connection_lost(exc)
        finally:
            self._on_closed()

    def request_began(self) -> None:
        """The headers of a request are in: its handler runs (views.py calls this)."""
        self._in_request = True
        self._cancel_header_timer()

    def request_ended(self) -> None:
        # Bytes of a next request that came while this one was served (pipelining) get no
        # header deadline of their own: they cannot be told from this one's body here. The
        # keep-alive timeout (--idle-timeout) closes such a connection.
        self._in_request = False

    def _arm_header_timer(self) -> None:
        self._header_timer = self._event_loop.call_later(
            self._header_timeout, self._header_deadline_passed
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def handle_error(self, request, status: int = 500, exc=None, message=None):
        """aiohttp's answer to a request it could not parse (or a handler that raised): a
        request line or header over the limit, or too many headers, is counted as
        `too_large`, any other unparsable request as `other`; the connection then closes."""
        if isinstance(exc, HttpProcessingError):
            too_large = isinstance(exc, LineTooLong) or "Too many headers" in str(exc)
            self._on_bad_request("too_large" if too_large else "other")
        return super().handle_error(request, status, exc, message)

    def _header_deadline_passed(self) -> None:
        self._header_timer = None
        if not self._in_request and self.transport is not None:
            self._on_header_deadline()
            self.force_close()


@dataclass
class _Admitted:
    """What one open connection counts against, released once (handshake failure or
    close, whichever comes first)."""

    source: str
    worker: str | None = None
    released: bool = False


def peer_worker(transport: asyncio.BaseTransport) -> tuple[str | None, str | None]:
    """(CN, serial) of the verified client certificate of a TLS transport, or (None, None).
    The serial is in the hex form OpenSSL prints, as `SSL_CLIENT_M_SERIAL` was."""
    cert = transport.get_extra_info("peercert") or {}
    common_name = None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                common_name = value
    return common_name, cert.get("serialNumber")


class AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, which sends the TLS alert of a failed handshake before it
    closes the connection (asyncio drops it), so a client without a valid certificate
    hears why ("certificate required", "unknown CA") instead of a bare EOF.

    Its read buffer is one TLS record (16 KiB), not asyncio's 256 KiB: the buffer is
    allocated per connection, and 10,000 idle agents would hold 2.5 GB of it."""

    max_size = 16 * 1024

    def _on_handshake_complete(self, handshake_exc):
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()  # the alert, written to the socket at once
        super()._on_handshake_complete(handshake_exc)


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Once `conn` has bytes to read (or its end: the handshake then fails at once)."""
    ready = loop.create_future()
    loop.add_reader(conn.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(conn.fileno())


def _abort(raw: asyncio.BaseTransport | None, conn: socket.socket) -> None:
    if raw is not None:
        raw.abort()
    conn.close()


class TLSPort:
    """One listening socket served on the running event loop: accept, admit, handshake,
    then aiohttp (`http`, its connections made with `http_options`: aiohttp's RequestHandler
    keywords). `by_worker` (agent port) bounds each worker's open connections by the
    CN of its verified certificate; `per_address` (public port) bounds each source's.
    `keepalive`: seconds between TCP keep-alive probes of an idle connection (tcp.py)."""

    def __init__(
        self,
        *,
        port: str,
        sock: socket.socket,
        context: ssl.SSLContext,
        http: web.Server,
        http_options: dict,
        bounds: ServerBounds,
        metrics: Metrics,
        refusals: RefusalLog,
        max_connections: int,
        per_address: int | None = None,
        by_worker: bool = False,
        keepalive: int | None = None,
    ) -> None:
        self.port = port
        self._keepalive = keepalive
        self._sock = sock
        self._context = context
        self._http = http
        self._http_options = http_options
        self._bounds = bounds
        self._metrics = metrics
        self._refusals = refusals
        self._max_connections = max_connections
        self._handshakes = Counts(bounds.handshakes_per_address)
        self._turns = asyncio.Semaphore(bounds.handshakes_at_once)  # FIFO: no one is passed over
        self._in_turn = self._waiting = 0  # handshakes in their turn, and waiting for one
        self._per_address = Counts(per_address) if per_address else None
        self._per_worker = Counts(bounds.worker_connections) if by_worker else None
        self.open = 0  # connections admitted and not yet closed
        self._tasks: set[asyncio.Task] = set()
        self._accepting: asyncio.Task | None = None

    def start(self) -> None:
        """Start accepting (on the running loop)."""
        self._sock.setblocking(False)
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop())

    @property
    def serving(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    async def stop(self, timeout: float) -> None:
        """Stop accepting, end handshakes in progress, and close every connection: idle
        ones at once, those with a request in progress once it is answered or after
        `timeout`."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for task in list(self._tasks):
            task.cancel()
        self._http.pre_shutdown()  # idle keep-alive connections close now, not at `timeout`
        await self._http.shutdown(timeout)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self._sock)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                continue
            except OSError as exc:  # EMFILE, ENFILE, ENOBUFS: no descriptor for it now
                self._refusals.refused(self.port, "-", f"cannot accept: {exc.strerror or exc}")
                self._metrics.connection_refused(self.port, "connection_limit")
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            self._admit(conn, address[0])

    def _refuse(self, conn: socket.socket, source: str, cause: str, what: str) -> None:
        self._metrics.connection_refused(self.port, cause)
        self._refusals.refused(self.port, source, what)
        with contextlib.suppress(OSError):
            # No FIN/TIME_WAIT dance for a client we will not serve: reset it.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _admit(self, conn: socket.socket, address: str) -> None:
        source = source_key(address)
        if self.open >= self._max_connections:
            self._refuse(
                conn, source, "connection_limit", f"the port holds {self.open} connections"
            )
            return
        if not self._handshakes.take(source):
            self._refuse(
                conn,
                source,
                "client_limit",
                f"{self._handshakes.limit} TLS handshakes from it are in progress",
            )
            return
        if self._per_address is not None and not self._per_address.take(source):
            self._handshakes.give(source)
            self._refuse(
                conn, source, "client_limit", f"it holds {self._per_address.limit} connections"
            )
            return
        if self._keepalive is not None:
            keep_alive(conn, self._keepalive)
        self.open += 1
        admitted = _Admitted(source)
        task = asyncio.get_running_loop().create_task(self._handshake(conn, admitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release(self, admitted: _Admitted) -> None:
        if admitted.released:
            return
        admitted.released = True
        self.open -= 1
        if self._per_address is not None:
            self._per_address.give(admitted.source)
        if admitted.worker is not None and self._per_worker is not None:
            self._per_worker.give(admitted.worker)

    def _connection(self, admitted: _Admitted) -> ServedConnection:
        loop = asyncio.get_running_loop()

        def header_deadline() -> None:
            self._metrics.connection_refused(self.port, "read_deadline")
            self._refusals.refused(
                self.port,
                admitted.source,
                f"no request headers within {self._bounds.header_timeout:g} s",
            )

        return ServedConnection(
            self._http,
            loop=loop,
            header_timeout=self._bounds.header_timeout,
            on_header_deadline=header_deadline,
            on_closed=lambda: self._release(admitted),
            admit=lambda transport: self._admit_worker(admitted, transport),
            on_bad_request=lambda cause: self._metrics.connection_refused(self.port, cause),
            **self._http_options,
        )

    async def _handshake(self, conn: socket.socket, admitted: _Admitted) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._bounds.handshake_timeout
        protocol = self._connection(admitted)
        handshaken = loop.create_future()
        tls = AlertingSSLProtocol(
            loop,
            protocol,
            self._context,
            handshaken,
            server_side=True,
            # asyncio's own deadline only backs up ours (wait_for).
            ssl_handshake_timeout=deadline + 1,
        )
        raw = None
        hello = False  # its hello has arrived: a timeout then means no turn came
        try:
            try:
                # A silent client takes no turn: it costs no CPU and is closed at the
                # deadline. One whose hello is here waits for a turn (bounds.py says why),
                # within the same deadline: stalled hellos queued ahead cannot hold the
                # others back for longer, and past it a client is refused before any work.
                async with asyncio.timeout(deadline):
                    await _readable(loop, conn)
                    hello = True
                    await self._take_turn()
                hello = False
                try:
                    raw, _ = await loop.connect_accepted_socket(lambda: tls, conn)
                    await asyncio.wait_for(handshaken, deadline)
                finally:
                    self._give_turn()
            finally:
                self._handshakes.give(admitted.source)
        except asyncio.CancelledError:
            self._release(admitted)
            _abort(raw, conn)
            raise
        except (TimeoutError, OSError, EOFError) as exc:
            self._release(admitted)
            # Counted before the close, so a client that sees it finds it counted.
            if hello and isinstance(exc, TimeoutError):
                self._metrics.connection_refused(self.port, "no_handshake_turn")
                self._refusals.refused(
                    self.port,
                    admitted.source,
                    f"no TLS handshake turn within {deadline:g} s (the port is busy)",
                )
            else:
                cause = handshake_cause(exc)
                self._metrics.handshake_failed(self.port, cause)
                self._refusals.refused(
                    self.port, admitted.source, f"TLS handshake failed ({cause})"
                )
            _abort(raw, conn)

    async def _take_turn(self) -> None:
        """Wait for one of the port's handshake turns (in order), counted while waiting."""
        self._count_handshakes(waiting=1)
        try:
            await self._turns.acquire()
        finally:
            self._count_handshakes(waiting=-1)
        self._count_handshakes(in_turn=1)

    def _give_turn(self) -> None:
        self._turns.release()
        self._count_handshakes(in_turn=-1)

    def _count_handshakes(self, in_turn: int = 0, waiting: int = 0) -> None:
        self._in_turn += in_turn
        self._waiting += waiting
        self._metrics.handshakes_now(self.port, self._in_turn, self._waiting)

    def _admit_worker(self, admitted: _Admitted, transport: asyncio.BaseTransport) -> bool:
        """Agent port, once the handshake is done and before any request is read: whether
        the worker its certificate names may have one more connection."""
        if self._per_worker is None:
            return True
        worker, _ = peer_worker(transport)
        if worker is None or not self._per_worker.take(worker):
            self._metrics.connection_refused(self.port, "client_limit")
            self._refusals.refused(
                self.port,
                admitted.source,
                f"worker {worker} holds {self._bounds.worker_connections} connections",
            )
            return False
        admitted.worker = worker
        return True
