"""The primary's subsystems, opened once per process and shared by both listeners."""

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from primary.config import PrimaryConfig
from primary.errors import ApiError
from primary.fleet.ca import CertificateAuthority
from primary.fleet.contacts import HeldContacts, PendingContacts
from primary.store import vault as vault_mod
from primary.store.datadir import DataDir
from primary.store.db import Store
from primary.store.engines import open_store
from primary.store.logs import ClosedAttempt, LogStore

if TYPE_CHECKING:
    from primary.store.pg_signals import PgSignals


class Waiter:
    """One worker's wake-up flag: set from any thread; waited on by a thread (`wait`) or on
    an event loop (`wait_async`, which costs a future and a timer, no thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._event = threading.Event()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    def clear(self) -> None:
        with self._lock:
            self._set = False
            self._event.clear()

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = True
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, timeout: float) -> bool:
        """Block this thread until set or `timeout` seconds; whether it was set."""
        return self._event.wait(timeout)

    async def wait_async(self, timeout: float, until: asyncio.Future | None = None) -> bool:
        """Wait on the running loop until set, `until` is done (the client has gone) or
        `timeout` seconds; whether it was set."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._set:
                return True
            self._futures.append((loop, future))
        timer = loop.call_later(timeout, _resolve, future)
        ended = functools.partial(_resolve_after, future)
        if until is not None:
            until.add_done_callback(ended)
        try:
            await future
        finally:
            timer.cancel()
            if until is not None:
                until.remove_done_callback(ended)
            with self._lock, contextlib.suppress(ValueError):
                self._futures.remove((loop, future))
        return self._set


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _resolve_after(future: asyncio.Future, _done: asyncio.Future) -> None:
    _resolve(future)


class Waiters:
    """Wakes a worker's held long poll when there is something for it.

    `wake(worker_id)`, `wake_many(ids)` and `wake_all()` may be called from any thread (a
    service, the sweeper, a notification listener of another primary)."""

    def __init__(self) -> None:
        self._waiters: dict[str, Waiter] = {}
        self._lock = threading.Lock()
        # Tells the other primaries of a shared store (connect_signals): the worker's poll
        # may be held by one of them.
        self.publish: Callable[[str], None] | None = None

    def arm(self, worker_id: str) -> Waiter:
        """Call before looking for work, then wait on it: a wake in between is kept."""
        with self._lock:
            waiter = self._waiters.get(worker_id)
            if waiter is None:
                waiter = self._waiters[worker_id] = Waiter()
        waiter.clear()
        return waiter

    def wake_all(self) -> None:
        """This primary's held polls only (it is stopping, or the fleet's primaries
        changed)."""
        with self._lock:
            waiters = list(self._waiters.values())
        for waiter in waiters:
            waiter.set()

    def wake_many(self, worker_ids) -> None:
        with self._lock:
            waiters = [self._waiters.get(w) for w in worker_ids]
        for waiter in waiters:
            if waiter is not None:
                waiter.set()

    def wake(self, worker_id: str, *, local: bool = False) -> None:
        """Wake the worker's held poll, here and (unless `local`) on the other primaries."""
        self.wake_many((worker_id,))
        if self.publish is not None and not local:
            self.publish(worker_id)


@dataclass
class Primary:
    config: PrimaryConfig
    data: DataDir
    store: Store
    vault: vault_mod.Vault | vault_mod.FleetVault
    ca: CertificateAuthority
    logs: LogStore  # or pg_logs.PostgresLogStore: the same methods
    waiters: Waiters = field(default_factory=Waiters)
    # Idle polls' contact times, stored in batches by the sweeper (primary/fleet/contacts.py).
    contacts: PendingContacts = field(default_factory=PendingContacts)
    # The polls held now, noted as contacts while they last (the same module).
    held_contacts: HeldContacts = field(default_factory=HeldContacts)
    # One planner at a time: decisions read slot counts that the previous decision changed.
    plan_lock: threading.Lock = field(default_factory=threading.Lock)
    # Set when anything about runs changed; followers (log tails, the UI) wait on it.
    run_changed: threading.Condition = field(default_factory=threading.Condition)
    # LISTEN/NOTIFY with the other primaries of a shared store (connect_signals).
    signals: "PgSignals | None" = None
    # The agent URLs of the fleet's live primaries (a shared store only), as this
    # primary's last presence beat read them (primary.fleet.presence); polls answer them.
    agent_urls: list[str] = field(default_factory=list)
    # Whether another primary was live at the last beat: only then are signals published.
    others_live: bool = False
    presence_beat_at: float = 0.0
    # Whether each listener serves, by name ("public", "agent"): set by whatever runs the
    # servers, read by GET /readyz.
    listeners: dict[str, Callable[[], bool]] = field(default_factory=dict)
    # What upper layers attach to the process's Primary, as Flask's app.extensions: the
    # metrics registry (primary.metrics.metrics_of).
    extensions: dict[str, object] = field(default_factory=dict)


def open_primary(config: PrimaryConfig) -> Primary:
    data = DataDir(config.data_dir.absolute())
    if not data.is_initialised():
        raise vault_mod.VaultError(
            f"{data.root} is not a cifleet data dir; run `cifleet-primary init --data-dir "
            f"{config.data_dir}` first"
        )
    key = vault_mod.load_key(data.vault_key)
    local_vault = vault_mod.Vault.open(data.vault, key)
    store = open_store(data.store_location())
    store.migrate()
    if data.shared_store():
        # A fleet in a shared database: its vault and logs are there, for every primary.
        from primary.store.pg_logs import PostgresLogStore

        vault = vault_mod.FleetVault(vault_mod.StoreVault(store, key), local_vault)
        logs = PostgresLogStore(store)
    else:
        vault, logs = local_vault, LogStore(data.logs)
    ca = CertificateAuthority(data.ca_cert.read_text(), vault.get("ca_key"))
    store.commit_listeners.append(lambda notes: _sync_closed_logs(logs, notes))
    return Primary(config=config, data=data, store=store, vault=vault, ca=ca, logs=logs)


def runs_changed(primary: Primary, *, local: bool = False) -> None:
    """Wake everyone following runs (log tails, the UI), here and (unless `local`) on the
    other primaries."""
    with primary.run_changed:
        primary.run_changed.notify_all()
    if primary.signals is not None and primary.others_live and not local:
        primary.signals.publish(SIGNAL_RUNS)


SIGNAL_WAKE = "wake"
SIGNAL_RUNS = "runs"


def connect_signals(primary: Primary, stop: threading.Event) -> None:
    """On a shared store: wakes and "runs changed" reach the other primaries, and theirs
    reach this one's held polls and followers (primary/store/pg_signals.py). SQLite: one
    primary, nothing to connect."""
    if primary.store.engine != "postgresql":
        return
    from primary.store.pg_signals import RESYNC, PgSignals

    def heard(kind: str, arg: str) -> None:
        if kind == SIGNAL_WAKE:
            primary.waiters.wake(arg, local=True)
        elif kind == SIGNAL_RUNS:
            runs_changed(primary, local=True)
        elif kind == RESYNC:  # signals were lost: every held poll and follower looks again
            primary.waiters.wake_all()
            runs_changed(primary, local=True)

    # Notifications need no durability: a lost one costs latency only.
    signals = PgSignals(lambda: primary.store.connect(synchronous_commit="off"), heard, stop)
    primary.signals = signals.start()

    def publish_wake(worker_id: str) -> None:
        if primary.others_live:  # alone, nobody else holds a poll (a cost on dispatch)
            signals.publish(SIGNAL_WAKE, worker_id)

    primary.waiters.publish = publish_wake


def _sync_closed_logs(logs: LogStore, notes: list) -> None:
    """Put on disk the partial logs of attempts closed without their worker (lost, taken
    back): the API shows them as complete from now on. A failure is logged (by the log
    store) and does not undo the change that committed."""
    for note in notes:
        if not isinstance(note, ClosedAttempt):
            continue
        for job in note.jobs:
            with contextlib.suppress(ApiError):
                logs.sync(note.run_id, note.attempt, job)
