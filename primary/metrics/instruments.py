"""One primary process's instruments: counters, gauges and histograms of events in this
process, in a registry of its own (a test may run several primaries in one process).

Events are this process's share by nature: with several primaries on one store, each counts
the runs it ended and the log bytes it received, and PromQL sums them. What the store holds
(workers, slots, the queue) is read from it at scrape time instead (fleet_state.py).

The servers report through the methods under "Servers" below; they import no server
library, and every label value is bounded (causes.py).
"""

import contextlib
import threading
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from primary.metrics.causes import (
    HANDSHAKE_CAUSES,
    HANDSHAKE_STATES,
    PORTS,
    REFUSAL_CAUSES,
    bounded,
)
from primary.runs.events import FirstStepStarted, RunEnded, RunsPruned
from primary.runs.runs import FINAL_STATES

# Seconds. Dispatch is milliseconds on an idle fleet and minutes behind a queue.
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds, start time
        PlatformCollector(registry=r)  # python_info
        GCCollector(registry=r)
        self.runs_finished = Counter(
            "cifleet_runs_finished",
            "Runs this primary gave a final state, by pipeline and state.",
            ["pipeline", "state"],
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "cifleet_dispatch_latency_seconds",
            "From a run's queueing to its first job's start on a worker.",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.run_duration = Histogram(
            "cifleet_run_duration_seconds",
            "From a run's start on its worker to its final state, for runs that started.",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.log_bytes = Counter(
            "cifleet_log_bytes_received",
            "Job log bytes received from agents (chunk bodies, resent bytes included).",
            registry=r,
        )
        self.store_transactions = Histogram(
            "cifleet_store_transaction_seconds",
            "Write transactions of the store: from asking for one (the wait for the write"
            " lock included) to its commit or rollback.",
            ["outcome"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.retention_runs = Counter(
            "cifleet_retention_deleted_runs",
            "Runs this primary's janitor deleted (the retention policy).",
            registry=r,
        )
        self.retention_attempts = Counter(
            "cifleet_retention_deleted_attempts",
            "Attempt rows of the runs this primary's janitor deleted.",
            registry=r,
        )
        self.retention_log_bytes = Counter(
            "cifleet_retention_deleted_log_bytes",
            "Job log bytes of the runs this primary's janitor deleted.",
            registry=r,
        )
        self.polls_held = Gauge(
            "cifleet_polls_held", "Agent polls held open now, waiting for work.", registry=r
        )
        self.polls_deferred = Counter(
            "cifleet_polls_deferred",
            "Polls answered at once with poll_after: no thread was left to hold them.",
            registry=r,
        )
        self.connections_refused = Counter(
            "cifleet_connections_refused",
            "Connections a listener closed without serving them, by port and cause.",
            ["port", "cause"],
            registry=r,
        )
        self.body_bytes_held = Gauge(
            "cifleet_request_body_bytes_held",
            "Bytes of request bodies a port holds in memory now (at most --body-memory).",
            ["port"],
            registry=r,
        )
        self.handshakes = Gauge(
            "cifleet_tls_handshakes",
            "TLS handshakes now, by port and state: in_turn (at most --handshakes-at-once),"
            " waiting (their hello is here, their turn is not).",
            ["port", "state"],
            registry=r,
        )
        self.handshake_failures = Counter(
            "cifleet_tls_handshake_failures",
            "TLS handshakes that failed, by port and cause.",
            ["port", "cause"],
            registry=r,
        )
        self._pipelines: set[str] = set()  # those whose run counters exist
        self._pipelines_lock = threading.Lock()
        # Every series of a bounded label set exists from the start, at 0: rate() and
        # increase() then see the first event too.
        # Looked up once: a transaction's observation is on every write's path.
        self._committed = self.store_transactions.labels("commit")
        self._rolled_back = self.store_transactions.labels("rollback")
        for port in PORTS:
            for cause in REFUSAL_CAUSES:
                self.connections_refused.labels(port, cause)
            for cause in HANDSHAKE_CAUSES:
                self.handshake_failures.labels(port, cause)
            self.body_bytes_held.labels(port)
            for state in HANDSHAKE_STATES:
                self.handshakes.labels(port, state)

    def add_pipelines(self, names: list[str]) -> None:
        """Start each pipeline's run counters at 0, for the same reason."""
        with self._pipelines_lock:  # scrapes may run at once
            for name in set(names) - self._pipelines:
                for state in FINAL_STATES:
                    self.runs_finished.labels(name, state)
                self._pipelines.add(name)

    # -- Hooks of the store and the runs layer.

    def on_commit(self, notes: list) -> None:
        """A store commit listener: count the run events of a committed transaction."""
        for note in notes:
            if isinstance(note, RunEnded):
                self.runs_finished.labels(note.pipeline, bounded(note.state, FINAL_STATES)).inc()
                if note.started_at is not None:
                    self.run_duration.observe(max(note.finished_at - note.started_at, 0.0))
            elif isinstance(note, FirstStepStarted):
                self.dispatch_latency.observe(max(note.started_at - note.queued_at, 0.0))
            elif isinstance(note, RunsPruned):
                self.retention_runs.inc(note.runs)
                self.retention_attempts.inc(note.attempts)
                self.retention_log_bytes.inc(note.log_bytes)

    def transaction_done(self, seconds: float, committed: bool) -> None:
        """A store transaction observer."""
        (self._committed if committed else self._rolled_back).observe(seconds)

    # -- The agent protocol.

    def log_bytes_received(self, count: int) -> None:
        self.log_bytes.inc(count)

    @contextlib.contextmanager
    def poll_held(self) -> Iterator[None]:
        """Around the wait of a held poll."""
        self.polls_held.inc()
        try:
            yield
        finally:
            self.polls_held.dec()

    def poll_deferred(self) -> None:
        """A poll that could not be held and was told to come back later."""
        self.polls_deferred.inc()

    # -- Servers. `port` is "public" or "agent"; a cause is one of causes.REFUSAL_CAUSES or
    # causes.HANDSHAKE_CAUSES (causes.handshake_cause names it from the ssl exception).

    def connection_refused(self, port: str, cause: str) -> None:
        """A listener closed a connection without serving it."""
        self.connections_refused.labels(bounded(port, PORTS), bounded(cause, REFUSAL_CAUSES)).inc()

    def body_bytes_setter(self, port: str) -> Callable[[float], None]:
        """What to call when the bytes of request bodies `port` holds in memory change: the
        gauge's child, looked up once (every request changes it twice)."""
        return self.body_bytes_held.labels(bounded(port, PORTS)).set

    def handshakes_now(self, port: str, in_turn: int, waiting: int) -> None:
        """The TLS handshakes of `port` in their turn and waiting for one changed."""
        port = bounded(port, PORTS)
        self.handshakes.labels(port, "in_turn").set(in_turn)
        self.handshakes.labels(port, "waiting").set(waiting)

    def handshake_failed(self, port: str, cause: str) -> None:
        """A TLS handshake on a listener failed."""
        self.handshake_failures.labels(bounded(port, PORTS), bounded(cause, HANDSHAKE_CAUSES)).inc()
