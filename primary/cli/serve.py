"""`cifleet-primary serve`: two TLS listeners, background loops, the built-in worker.

Order: the two listening sockets are bound first (primary/cli/listeners.py), so a port in
use ends serve before anything has started; then the store, the servers on those sockets,
the sweeper and the built-in worker. DATA/serve.json says where it serves (its pid and both
ports, which matter with port 0) once both listeners serve.

Threads: both ports are served on one asyncio event loop in one thread (primary/server/),
each with its own pool of threads for the Flask apps (public_threads, agent_threads). Idle
connections, TLS handshakes and held long polls cost no thread. Signal handlers only set
the stop event; the main thread does the shutdown.
"""

import contextlib
import dataclasses
import json
import logging
import os
import signal
import ssl
import tempfile
import threading
import time

from agent.home import write_atomic
from primary.app import create_agent_app, create_app
from primary.cli.listeners import bind_listeners
from primary.config import PrimaryConfig
from primary.context import Primary, connect_signals, open_primary
from primary.errors import StorageFull, StorageUnavailable
from primary.fleet import contacts, presence, worker_history
from primary.fleet.builtin_worker import local_api_url, start_builtin_worker
from primary.metrics import metrics_of
from primary.notifications.sender import start_sender
from primary.runs import janitor, leases
from primary.runs.scheduler import plan
from primary.server.bounds import ServerBounds
from primary.server.loop import PortSpec, Servers
from primary.server.public_cert import PublicCertificate
from primary.sources import schedules

log = logging.getLogger("cifleet.primary")
SWEEP_INTERVAL = 1.0
# Connections waiting to be accepted: a whole fleet reconnects at once after a primary
# restart, and a full backlog makes each agent wait out a SYN retry. Accepting is cheap
# (admission and handshakes happen after it), so the public port gets a real backlog too.
AGENT_LISTEN_BACKLOG = 1024
PUBLIC_LISTEN_BACKLOG = 128


def tls_contexts(primary: Primary) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(public, agent): the server certificate on both; the agent port requires a client
    certificate signed by the fleet CA."""
    # The server key lives in the vault; ssl can only load it from a file, so it exists on
    # disk (0600, in the 0700 data dir) only while the contexts are built.
    fd, key_path = tempfile.mkstemp(dir=primary.data.root, prefix=".server-key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(primary.vault.get("server_key"))
        contexts = []
        for require_client_cert in (False, True):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(primary.data.server_cert), key_path)
            if require_client_cert:
                context.load_verify_locations(str(primary.data.ca_cert))
                context.verify_mode = ssl.CERT_REQUIRED
            contexts.append(context)
    finally:
        os.unlink(key_path)
    return contexts[0], contexts[1]


def _sweep_leases(primary: Primary, stop: threading.Event) -> None:
    full_pass = time.monotonic()
    every = contacts.REFRESH_SHARE * primary.config.heartbeat_timeout
    while not stop.wait(SWEEP_INTERVAL):
        try:  # idle polls' contacts (fleet/contacts.py); kept for the next pass if it fails
            primary.held_contacts.refresh(time.time(), every, primary.contacts)
            primary.contacts.write(primary.store)
        except Exception:
            log.exception("storing the workers' contacts failed")
        try:
            presence.beat(primary)  # this primary serves the fleet (others read it)
            # plan() also runs here so a run waiting for its busy home moves on time, and
            # what every waiting run says about why it waits stays true.
            if not leases.expire_leases(primary):
                plan(primary, refresh_reasons=True)
            # What time changed in workers' states (inactive, back), for their history.
            if time.monotonic() - full_pass > worker_history.FULL_PASS_SECONDS:
                full_pass = time.monotonic()
                worker_history.record_all(primary)
            else:
                worker_history.record(primary)
        except Exception:
            log.exception("lease sweep failed")


def _janitor(primary: Primary, stop: threading.Event) -> None:
    """A pass of the retention policy every retention_interval (the first one interval
    after the start, so a restart loop does not prune in a loop)."""
    holder = f"{presence.name_of(primary)}:{os.getpid()}"
    while not stop.wait(primary.config.retention_interval):
        try:
            janitor.prune(primary, holder, stop=stop)
        except Exception:
            log.exception("retention pass failed")


def _fire_schedules(primary: Primary, stop: threading.Event) -> None:
    # A thread of its own: a fire may ask a repository for its commit (up to 30 s), which
    # must not hold up the lease sweeper.
    while not stop.wait(schedules.INTERVAL_SECONDS):
        try:
            schedules.fire_due(primary)
        except Exception:
            log.exception("firing schedules failed")


def serve(config: PrimaryConfig, bounds: ServerBounds | None = None) -> int:
    """Serve until SIGTERM or SIGINT. Raises ListenError or PublicCertError, before anything
    has started, when a port cannot be bound or the operator's certificate cannot serve.
    `bounds`: what one client may take of each port."""
    bounds = bounds or ServerBounds()
    public_cert = None
    if config.public_cert is not None:
        public_cert = PublicCertificate(config.public_cert, config.public_key)
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
    servers: Servers | None = None
    announced = False
    try:
        primary = open_primary(config)
        # Agents could not renew leases while no primary served; when another did (a
        # fleet of several), they moved to it and need no grace.
        if not presence.others_live(primary):
            leases.grace_after_restart(primary)
        presence.beat(primary)
        connect_signals(primary, stop)  # wakes and log follows across primaries
        public_context, agent_context = tls_contexts(primary)
        if public_cert is not None:
            public_cert.install(public_context)
        agent_app = create_agent_app(primary, stop)
        servers = Servers(
            public=PortSpec(
                public_listener.sock,
                public_context,
                create_app(primary, stop),
                config.public_threads,
            ),
            agent=PortSpec(
                agent_listener.sock,
                agent_context,
                agent_app,
                config.agent_threads,
                keepalive=config.agent_keepalive_seconds,
            ),
            bounds=bounds,
            metrics=metrics_of(primary),
        )
        servers.start()
        # GET /readyz: each listener serves while it accepts connections.
        primary.listeners.update(public=servers.serving("public"), agent=servers.serving("agent"))
        sweeper = threading.Thread(
            target=_sweep_leases, args=(primary, stop), name="lease-sweeper", daemon=True
        )
        sweeper.start()
        start_sender(primary, stop)  # outgoing webhooks (primary/notifications/)
        if config.retention_interval > 0:
            threading.Thread(
                target=_janitor, args=(primary, stop), name="janitor", daemon=True
            ).start()
        threading.Thread(
            target=_fire_schedules, args=(primary, stop), name="schedules", daemon=True
        ).start()

        reload_cert = threading.Event()

        def on_signal(signum, frame):
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        # SIGHUP (systemctl reload, a certbot deploy hook): the operator's certificate again.
        signal.signal(signal.SIGHUP, lambda signum, frame: reload_cert.set())
        announced = True
        primary.data.pidfile.write_text(f"{os.getpid()}\n")
        _write_serve_info(primary, public_cert)
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
            if reload_cert.is_set():
                reload_cert.clear()
                if public_cert is not None:
                    public_cert.reload()
    finally:
        if servers is not None:
            log.info("stopping")
            stop.set()
            worker_stop.set()
            primary.waiters.wake_all()  # release held polls now, not after their hold time
            if builtin is not None:
                builtin.join(timeout=15)
            servers.stop()
            with contextlib.suppress(StorageFull, StorageUnavailable):
                primary.contacts.write(primary.store)  # the last polls' contacts are kept
            presence.withdraw(primary)
        if announced:
            primary.data.pidfile.unlink(missing_ok=True)
            primary.data.serve_info.unlink(missing_ok=True)
        public_listener.close()
        agent_listener.close()
        if servers is not None:
            log.info("stopped")
    return 0


def _write_serve_info(primary: Primary, public_cert: PublicCertificate | None) -> None:
    """DATA/serve.json, once both listeners serve: how to reach this primary (the CLI reads
    api_url; with port 0 the ports are only known here)."""
    info = {
        "pid": os.getpid(),
        "api_url": local_api_url(primary),
        "api_port": primary.config.api_port,
        "agent_port": primary.config.agent_port,
    }
    if public_cert is not None:
        info["public_names"] = list(public_cert.names)
    write_atomic(primary.data.serve_info, (json.dumps(info) + "\n").encode(), 0o644)
