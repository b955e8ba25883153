"""Both ports' servers on one asyncio event loop, in one thread of the primary's process
(beside the sweeper and the built-in worker; the in-memory poll waiters need one process).

`Servers.start` runs the loop, starts accepting on both listening sockets and returns once
they serve (or raises what stopped them); `Servers.stop` closes both and waits for the
requests in progress. Each port has its own connection bounds and its own thread pool, so
pressure on one never takes what the other needs.
"""

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from aiohttp import web

from primary.metrics.instruments import Metrics
from primary.server.bounds import RefusalLog, ServerBounds
from primary.server.connections import TLSPort
from primary.server.wsgi import WSGIApp, WSGIBridge

log = logging.getLogger("cifleet.primary")
# aiohttp's own messages (a malformed request, a header over the limit): one line each, no
# traceback; what a client sends wrong is its problem, not the primary's.
http_log = logging.getLogger("cifleet.primary.http")


class _NoTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg = f"{record.getMessage()}: {record.exc_info[1]}"
            record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


http_log.addFilter(_NoTraceback())
# Agent-port bodies up to this size (polls, reports, small log chunks) are read on the loop
# before a thread is taken; larger log chunks stream to the log store from a thread.
AGENT_BUFFERED_BODY = 64 << 10
# Threads for agent-port bodies that stream (log chunks past AGENT_BUFFERED_BODY): slow
# senders wait here, never in the threads polls and reports use.
AGENT_BODY_THREADS = 32


@dataclass(frozen=True)
class PortSpec:
    """What one port serves: its listening socket, TLS context, WSGI app and threads;
    `keepalive`: seconds between TCP keep-alive probes of its idle connections."""

    sock: socket.socket
    context: ssl.SSLContext
    app: WSGIApp
    threads: int
    keepalive: int | None = None


class Servers:
    def __init__(
        self,
        public: PortSpec,
        agent: PortSpec,
        bounds: ServerBounds,
        metrics: Metrics,
        stop_timeout: float = 15.0,
    ) -> None:
        self._specs = {"public": public, "agent": agent}
        self._bounds = bounds
        self._metrics = metrics
        self._stop_timeout = stop_timeout
        self._refusals = RefusalLog(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ports: dict[str, TLSPort] = {}
        self._bridges: list[WSGIBridge] = []
        self._stopped: asyncio.Event | None = None

    def serving(self, port: str) -> Callable[[], bool]:
        """A check of whether `port` ("public", "agent") accepts connections (/readyz)."""

        def check() -> bool:
            tls_port = self._ports.get(port)
            alive = self._thread is not None and self._thread.is_alive()
            return alive and tls_port is not None and tls_port.serving

        return check

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def start(self) -> None:
        started: Future = Future()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="servers", daemon=True
        )
        self._thread.start()
        started.result()  # raises what stopped the start

    def stop(self) -> None:
        """Stop accepting, answer the requests in progress (at most stop_timeout), close."""
        if self._loop is None or self._thread is None or not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(self._stop_timeout + 10)

    def _run(self, started: Future) -> None:
        # asyncio.Runner, not a bare loop: on close it cancels and awaits what is still
        # pending (a connection's handler past the stop timeout), so no task is left to be
        # garbage-collected later, warning "Task was destroyed but it is pending!".
        with asyncio.Runner() as runner:
            self._loop = runner.get_loop()
            try:
                runner.run(self._serve(started))
            except BaseException as exc:  # noqa: BLE001 - handed to start()'s caller
                if not started.done():
                    started.set_exception(exc)
                else:
                    log.exception("the servers' event loop failed")

    def _port(self, name: str, spec: PortSpec) -> TLSPort:
        bounds = self._bounds
        address = spec.sock.getsockname()[:2]
        agent = name == "agent"
        bridge = WSGIBridge(
            spec.app,
            spec.threads,
            bounds,
            address,
            name=name,
            refused=lambda cause: self._metrics.connection_refused(name, cause),
            body_memory=self._metrics.body_bytes_setter(name),
            **(
                {
                    "buffered_body": AGENT_BUFFERED_BODY,
                    "streamed_threads": AGENT_BODY_THREADS,
                    "certificates": True,
                    "worker_requests": bounds.worker_requests,
                    "deferrable": True,
                }
                if agent
                else {}
            ),
        )
        self._bridges.append(bridge)
        http = web.Server(bridge)
        http_options = {
            "keepalive_timeout": bounds.idle_timeout,
            "access_log": None,
            "logger": http_log,
            "max_line_size": bounds.max_header_line,
            "max_field_size": bounds.max_header_line,
        }
        return TLSPort(
            port=name,
            sock=spec.sock,
            context=spec.context,
            http=http,
            http_options=http_options,
            bounds=bounds,
            metrics=self._metrics,
            refusals=self._refusals,
            max_connections=bounds.agent_connections if agent else bounds.public_connections,
            per_address=None if agent else bounds.connections_per_address,
            by_worker=agent,
            keepalive=spec.keepalive,
        )

    async def _serve(self, started: Future) -> None:
        self._stopped = asyncio.Event()
        for name, spec in self._specs.items():
            self._ports[name] = self._port(name, spec)
        for tls_port in self._ports.values():
            tls_port.start()
        started.set_result(None)
        await self._stopped.wait()
        # The agent port first: agents hear of the stop before the admin API goes.
        for name in ("agent", "public"):
            await self._ports[name].stop(self._stop_timeout)
        for bridge in self._bridges:
            await asyncio.get_running_loop().run_in_executor(None, bridge.shutdown)
