"""Signals between the primaries of one PostgreSQL store, with LISTEN/NOTIFY: "wake the held
poll of worker W" (a run was assigned to it through another primary) and "runs changed"
(log followers read again).

Each primary listens on a connection of its own, in a thread, and hands what it hears to a
callback (the local waiters); it reconnects after an outage with jittered backoff. What
it publishes goes out from another thread, so no request waits for it: a signal is queued
and sent right after the change that caused it committed, several queued at once in one
round trip. A signal lost in an outage costs latency only: each primary plans every second
and wakes its own agents, and followers read again every second anyway.

Payloads are `ORIGIN KIND [ARG]`; a primary ignores its own (it woke its local waiters
already).
"""

import contextlib
import logging
import random
import secrets
import threading
from collections.abc import Callable

import psycopg

log = logging.getLogger("cifleet.primary")

CHANNEL = "cifleet"
LISTEN_TICK = 1.0  # how often the listener looks at the stop event
BACKOFF_INITIAL = 0.2
BACKOFF_CAP = 5.0
URGENT = "wake"  # signals of this kind are sent at once, not gathered
RESYNC = "resync"  # given to on_signal after an outage of the listener
MAX_QUEUED = 10_000  # past this, signals are dropped (a burst; polls and reads catch up)
MAX_PAYLOAD = 7_000  # PostgreSQL's limit is 8000 bytes per notification
# Between two sends, what is queued meanwhile goes together: a busy fleet (every log chunk
# says "runs changed") costs the database a few notifying commits per second, not hundreds.
PUBLISH_INTERVAL = 0.05


class PgSignals:
    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        on_signal: Callable[[str, str], None],
        stop: threading.Event,
    ) -> None:
        """`connect`: a new autocommit connection; `on_signal(kind, arg)` is called for the
        signals of the other primaries, on the listener thread."""
        self.origin = secrets.token_hex(4)
        self._connect = connect
        self._on_signal = on_signal
        self._stop = stop
        self._queue: dict[str, None] = {}  # ordered, and a repeated signal is queued once
        self._cond = threading.Condition()
        self.listening = threading.Event()  # set while LISTEN holds (tests, readiness)
        self._threads = [
            threading.Thread(target=self._listen_forever, name="pg-listen", daemon=True),
            threading.Thread(target=self._publish_forever, name="pg-notify", daemon=True),
        ]

    def start(self) -> "PgSignals":
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=LISTEN_TICK + 1)

    # -- Publishing: any thread, never blocks on the database.

    def publish(self, kind: str, arg: str = "") -> None:
        with self._cond:
            if len(self._queue) < MAX_QUEUED:
                self._queue[f"{kind} {arg}".rstrip()] = None
                self._cond.notify()

    def _take(self) -> list[str]:
        with self._cond:
            while not self._queue and not self._stop.is_set():
                self._cond.wait(LISTEN_TICK)
            taken, self._queue = list(self._queue), {}
        return taken

    def _pause(self) -> None:
        """Let what comes next gather for PUBLISH_INTERVAL, unless a wake is queued: a
        held poll waits for that one, and the dispatch with it."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._stop.is_set() or any(k.startswith(URGENT) for k in self._queue),
                PUBLISH_INTERVAL,
            )

    def _publish_forever(self) -> None:
        conn: psycopg.Connection | None = None
        delay = BACKOFF_INITIAL
        while not self._stop.is_set():
            signals = self._take()
            if not signals:
                continue
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._connect()
                # One transaction: the notifications go out together at its commit.
                with conn.transaction():
                    for payload in _payloads(self.origin, signals):
                        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
                delay = BACKOFF_INITIAL
                self._pause()
            except psycopg.Error as exc:
                # Dropped: they cost latency only (see the module's docstring).
                log.debug("could not publish %d signal(s): %s", len(signals), exc)
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(random.uniform(0, delay))
                delay = min(BACKOFF_CAP, delay * 2)
        if conn is not None:
            conn.close()

    # -- Listening: one thread, one connection.

    def _listen_forever(self) -> None:
        delay = BACKOFF_INITIAL
        failing = False
        while not self._stop.is_set():
            try:
                with contextlib.closing(self._connect()) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.info("listening to the other primaries again")
                        # What they said meanwhile is lost: everyone here looks again.
                        self._on_signal(RESYNC, "")
                    failing, delay = False, BACKOFF_INITIAL
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=LISTEN_TICK):
                            self._dispatch(notify.payload)
                            if self._stop.is_set():
                                break
            except psycopg.Error as exc:
                self.listening.clear()
                if not failing:
                    log.warning(
                        "cannot listen to the other primaries (%s); retrying. Until then"
                        " their runs reach this primary's agents at the next plan (1 s)",
                        exc,
                    )
                failing = True
                self._stop.wait(random.uniform(delay / 2, delay))
                delay = min(BACKOFF_CAP, delay * 2)
        self.listening.clear()

    def _dispatch(self, payload: str) -> None:
        for line in payload.splitlines():
            origin, _, rest = line.partition(" ")
            if origin == self.origin or not rest:
                continue
            kind, _, arg = rest.partition(" ")
            try:
                self._on_signal(kind, arg)
            except Exception:
                log.exception("a signal from another primary failed: %r", line[:200])


def _payloads(origin: str, signals: list[str]) -> list[str]:
    """The signals as few notifications as fit PostgreSQL's payload limit, one per line."""
    payloads, current = [], ""
    for signal in signals:
        line = f"{origin} {signal}"
        if current and len(current) + 1 + len(line) > MAX_PAYLOAD:
            payloads.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        payloads.append(current)
    return payloads
