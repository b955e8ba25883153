"""What one client may take of a listener: the bounds (each a `serve` flag), the counts
they are checked against, and the rate-limited log line a refusal gets. Pure: no sockets,
no event loop; the clock is passed in, so the tests drive it."""

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

IPV6_PREFIX = 64


@dataclass(frozen=True)
class ServerBounds:
    """docs/design.md ("Bounds") says why each default is what it is."""

    # A client's TLS hello must arrive, and its handshake turn come, within this many
    # seconds of the connection's accept; its handshake must finish within as long of its
    # turn.
    handshake_timeout: float = 5.0
    # TLS handshakes each port works on at once; clients whose hello has arrived wait their
    # turn. All at once, a fleet reconnecting together shares the CPU so thinly that every
    # handshake misses its deadline and is tried again, and none completes.
    handshakes_at_once: int = 64
    # TLS handshakes in progress from one source address, on each port: the connections
    # nobody has authenticated yet.
    handshakes_per_address: int = 32
    # Open connections from one source address on the public port.
    connections_per_address: int = 128
    # Open agent-port connections of one worker (its certificate's CN): a poll, a few
    # report connections per running job and the agent's pool of warm ones.
    worker_connections: int = 64
    # Requests of one worker in progress at once on the agent port; past it, 429.
    worker_requests: int = 16
    # Open connections per listener, past which new ones are closed at once.
    public_connections: int = 1024
    agent_connections: int = 16384
    # A connection with no request in progress is closed after this long.
    idle_timeout: float = 60.0
    # A request's line and headers must arrive within this long of the connection's
    # handshake or of their first byte.
    header_timeout: float = 10.0
    # A request body must arrive within body_timeout seconds plus one second per
    # body_min_rate bytes (mod_reqtimeout's rule): a slow link is served, a drip is not.
    body_timeout: float = 20.0
    body_min_rate: int = 8192
    # The largest request line and header line (bytes).
    max_header_line: int = 8190
    # Bytes of request bodies one port holds in memory at once (bodies are read whole
    # before a thread is taken; up to 1 MiB each): past it, a request waits for room.
    body_memory: int = 64 << 20


# The `serve` flag of each bound (--handshake-timeout for handshake_timeout, ...) says this.
FLAG_HELP = {
    "handshake_timeout": "seconds a client has to send its TLS hello and get its handshake"
    " turn after its connect, and to finish the handshake once its turn comes",
    "handshakes_at_once": "TLS handshakes each port works on at once (the others wait their turn)",
    "handshakes_per_address": "TLS handshakes in progress from one source address, per port",
    "connections_per_address": "open public-port connections from one source address",
    "worker_connections": "open agent-port connections of one worker (certificate)",
    "worker_requests": "agent-port requests of one worker in progress at once (past: 429)",
    "public_connections": "open connections of the public port",
    "agent_connections": "open connections of the agent port",
    "idle_timeout": "seconds a connection may stay open with no request in progress",
    "header_timeout": "seconds a request's line and headers have to arrive",
    "body_timeout": "seconds a request body has to arrive, plus one per --body-min-rate bytes",
    "body_min_rate": "bytes per second a long request body must arrive at, at least",
    "max_header_line": "longest request line or header line (bytes)",
    "body_memory": "bytes of request bodies each port holds in memory at once (past: wait)",
}


def source_key(address: str) -> str:
    """The key a source address is counted under: the IPv4 address (also when mapped into
    IPv6), or the /64 an IPv6 address is in (one customer's allocation: an address per
    connection would be free to have); anything unparsable as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


class Counts:
    """How many of something each key holds, each at most `limit`. Keys at zero are
    forgotten, so the table holds only what is open. One thread (the event loop's)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def take(self, key: str) -> bool:
        """Count one more for `key`, unless it holds `limit` already."""
        held = self._counts.get(key, 0)
        if held >= self.limit:
            return False
        self._counts[key] = held + 1
        return True

    def give(self, key: str) -> None:
        held = self._counts[key] - 1
        if held:
            self._counts[key] = held
        else:
            del self._counts[key]

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)

    def __len__(self) -> int:
        return len(self._counts)


def body_deadline(started: float, received: int, bounds: ServerBounds) -> float:
    """When a body whose reading started at `started` and has `received` bytes so far must
    have its next bytes. Pure."""
    return started + bounds.body_timeout + received / bounds.body_min_rate


class RefusalLog:
    """At most one log line per refused client (port and source) per `interval`, and at
    most `lines` in all per interval; what was left out is counted in one line at the next
    interval. A refused client's connection is its own problem, so no traceback, ever."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        lines: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._lines = lines
        self._clock = clock
        self._window_start = clock()
        self._seen: set[tuple[str, str]] = set()
        self._left_out = 0

    def refused(self, port: str, source: str, what: str) -> None:
        """One refusal of `source` on `port`; `what` says why, for people."""
        now = self._clock()
        if now - self._window_start >= self._interval:
            if self._left_out:
                self._log.warning(
                    "%d more refused connections in the last %d s were not logged",
                    self._left_out,
                    round(now - self._window_start),
                )
            self._window_start, self._seen, self._left_out = now, set(), 0
        key = (port, source)
        if key in self._seen or len(self._seen) >= self._lines:
            self._left_out += 1
            return
        self._seen.add(key)
        self._log.warning("%s port: refused %s: %s", port, source, what)
