"""`cifleet-primary serve`: two TLS listeners, background loops, the built-in worker.

Order: the two listening sockets are bound first (primary/cli/listeners.py), so a port in
use ends serve before anything has started; then the store, the servers on those sockets,
the sweeper and the built-in worker. DATA/serve.json says where it serves (its pid and both
ports, which matter with port 0) once both listeners serve.

Threads: each listener is a cheroot server with a pool of threads (public_threads; the
agent listener starts with agent_threads and grows to max_agent_threads). A held long poll
occupies one agent-port thread; idle keep-alive connections wait in cheroot's selector, not
on a thread. Signal handlers only set the stop event; the main thread does the shutdown.
"""

import dataclasses
import json
import logging
import os
import signal
import ssl
import tempfile
import threading
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter

from agent.home import write_atomic
from primary.app import create_agent_app, create_app
from primary.cli.listeners import Listener, bind_listeners
from primary.config import PrimaryConfig
from primary.context import Primary, connect_signals, open_primary
from primary.fleet import presence
from primary.fleet.builtin_worker import local_api_url, start_builtin_worker
from primary.runs import leases
from primary.runs.scheduler import plan

log = logging.getLogger("cifleet.primary")
SWEEP_INTERVAL = 1.0
# cheroot's socket timeout for accepted connections: bounds a TLS handshake and the wait for
# a request on an idle keep-alive connection.
SOCKET_TIMEOUT = 20
# Connections waiting to be accepted on the agent port: a whole fleet reconnects at once
# after a primary restart, and a full backlog makes each agent wait out a SYN retry.
AGENT_LISTEN_BACKLOG = 1024
PUBLIC_LISTEN_BACKLOG = 5  # cheroot's default


class BoundServer(wsgi.Server):
    """A cheroot server on a socket bound and listening before it was made: serve binds its
    ports itself, first (primary/cli/listeners.py), and cheroot's prepare() takes that
    socket where it would bind one."""

    def __init__(self, listener: Listener, app, **kwargs) -> None:
        super().__init__(listener.sock.getsockname()[:2], app, **kwargs)
        self._listener = listener

    def bind(self, family, kind, proto=0):
        # prepare() calls this for the address it resolved from bind_addr (the socket's own).
        self.socket = self._listener.sock
        return self.socket


class AgentPool:
    """The agent listener's threads, grown on demand up to `max_agent_threads`: a held long
    poll occupies one, and an idle thread costs little memory (docs/design.md) and no CPU, so a
    thread per connected agent is cheaper than making agents poll again and again."""

    def __init__(self, server: wsgi.Server, size: int, maximum: int):
        self._server = server
        self.size = size
        self._maximum = maximum

    def grow(self) -> int:
        """Double the pool (at most to the maximum); return how many threads were added.
        Doubling: a fleet connecting at once waits for a few growth steps, not dozens."""
        added = min(self.size, self._maximum - self.size)
        if added <= 0:
            return 0
        self._server.requests.grow(added)
        self.size += added
        log.info("agent listener: %d threads (held polls took them all)", self.size)
        return added


def _ssl_adapter(primary: Primary, key_file: Path, require_client_cert: bool) -> BuiltinSSLAdapter:
    chain = str(primary.data.ca_cert) if require_client_cert else None
    adapter = BuiltinSSLAdapter(str(primary.data.server_cert), str(key_file), chain)
    adapter.context.minimum_version = ssl.TLSVersion.TLSv1_2
    if require_client_cert:
        adapter.context.verify_mode = ssl.CERT_REQUIRED
    return adapter


def build_servers(
    primary: Primary, stop: threading.Event, public_listener: Listener, agent_listener: Listener
) -> tuple[wsgi.Server, wsgi.Server]:
    config = primary.config
    public = BoundServer(
        public_listener,
        create_app(primary, stop),
        numthreads=config.public_threads,
        server_name="cifleet",
        timeout=SOCKET_TIMEOUT,
        request_queue_size=PUBLIC_LISTEN_BACKLOG,
    )
    agent_app = create_agent_app(primary, stop)
    agent = BoundServer(
        agent_listener,
        agent_app,
        numthreads=config.agent_threads,
        max=max(config.max_agent_threads, config.agent_threads),
        server_name="cifleet",
        timeout=SOCKET_TIMEOUT,
        request_queue_size=AGENT_LISTEN_BACKLOG,
    )
    pool = AgentPool(agent, config.agent_threads, config.max_agent_threads)
    agent_app.extensions["cifleet.poll_gate"].grow = pool.grow
    public.keep_alive_conn_limit = config.keepalive_connections
    agent.keep_alive_conn_limit = config.keepalive_connections
    # The server key lives in the vault; ssl can only load it from a file, so it exists on
    # disk (0600, in the 0700 data dir) only while the contexts are built.
    fd, key_path = tempfile.mkstemp(dir=primary.data.root, prefix=".server-key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(primary.vault.get("server_key"))
        public.ssl_adapter = _ssl_adapter(primary, Path(key_path), require_client_cert=False)
        agent.ssl_adapter = _ssl_adapter(primary, Path(key_path), require_client_cert=True)
    finally:
        os.unlink(key_path)
    return public, agent


def _sweep_leases(primary: Primary, stop: threading.Event) -> None:
    while not stop.wait(SWEEP_INTERVAL):
        try:
            presence.beat(primary)  # this primary serves the fleet (others read it)
            # plan() also runs here so a run waiting for its busy home moves on time, and
            # what every waiting run says about why it waits stays true.
            if not leases.expire_leases(primary):
                plan(primary, refresh_reasons=True)
        except Exception:
            log.exception("lease sweep failed")


def serve(config: PrimaryConfig) -> int:
    """Serve until SIGTERM or SIGINT. Raises ListenError, before anything has started, when
    a port cannot be bound."""
    public_listener, agent_listener = bind_listeners(
        config.bind,
        config.api_port,
        config.agent_port,
        agent_backlog=AGENT_LISTEN_BACKLOG,
        public_backlog=PUBLIC_LISTEN_BACKLOG,
    )
    # The ports as bound (they differ with port 0): registration answers and the built-in
    # worker use them.
    config = dataclasses.replace(
        config, api_port=public_listener.port, agent_port=agent_listener.port
    )
    stop = threading.Event()
    worker_stop = threading.Event()
    builtin = None
    servers: list[wsgi.Server] = []
    announced = False
    try:
        primary = open_primary(config)
        # Agents could not renew leases while no primary served; when another did (a
        # fleet of several), they moved to it and need no grace.
        if not presence.others_live(primary):
            leases.grace_after_restart(primary)
        presence.beat(primary)
        connect_signals(primary, stop)  # wakes and log follows across primaries
        public, agent = build_servers(primary, stop, public_listener, agent_listener)
        for server in (agent, public):  # stopped in this order
            server.prepare()
            servers.append(server)
        threads = [
            threading.Thread(target=public.serve, name="public-listener", daemon=True),
            threading.Thread(target=agent.serve, name="agent-listener", daemon=True),
            threading.Thread(
                target=_sweep_leases, args=(primary, stop), name="lease-sweeper", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        # GET /readyz: each listener serves while its thread runs (a crash ends it).
        primary.listeners.update(public=threads[0].is_alive, agent=threads[1].is_alive)

        def on_signal(signum, frame):
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        announced = True
        primary.data.pidfile.write_text(f"{os.getpid()}\n")
        _write_serve_info(primary)
        log.info(
            "cifleet primary serving: public https://%s:%d, agent https://%s:%d (mutual TLS), "
            "data %s",
            config.bind,
            config.api_port,
            config.bind,
            config.agent_port,
            primary.data.root,
        )
        builtin = start_builtin_worker(primary, worker_stop)
        while not stop.wait(1.0):
            pass
    finally:
        # Also after a failed start: cheroot's worker threads would keep the process up.
        if servers:
            log.info("stopping")
            worker_stop.set()
            primary.waiters.wake_all()  # release held polls now, not after their hold time
            if builtin is not None:
                builtin.join(timeout=15)
            for server in servers:
                server.stop()
            presence.withdraw(primary)
        if announced:
            primary.data.pidfile.unlink(missing_ok=True)
            primary.data.serve_info.unlink(missing_ok=True)
        public_listener.close()
        agent_listener.close()
        if servers:
            log.info("stopped")
    return 0


def _write_serve_info(primary: Primary) -> None:
    """DATA/serve.json, once both listeners serve: how to reach this primary (the CLI reads
    api_url; with port 0 the ports are only known here)."""
    info = {
        "pid": os.getpid(),
        "api_url": local_api_url(primary),
        "api_port": primary.config.api_port,
        "agent_port": primary.config.agent_port,
    }
    write_atomic(primary.data.serve_info, (json.dumps(info) + "\n").encode(), 0o644)
