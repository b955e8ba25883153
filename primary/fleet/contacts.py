"""Workers' last contact, written in batches. Each idle agent's poll moves its worker's
contact time and load report; as a write transaction of its own, that is 333 a second for
10,000 agents, each a network round trip on PostgreSQL.

A poll whose touch changes nothing else is noted here, and the lease sweeper writes what
was noted in one transaction a pass (`SWEEP_INTERVAL`, a second). A touch that changes what
the scheduler decides by (draining, version, who jobs run as), or whose worker the store
could show as inactive before the next pass, is written at once (primary/api/long_poll.py).
A noted contact is stored only over an older one: with several primaries, as with leases,
their clocks are taken to agree.

A held poll is contact too. An idle agent's poll may be held for minutes (`--idle-poll-hold`,
longer than the heartbeat timeout), so while it is held its worker is noted as heard every
REFRESH_SHARE of the heartbeat timeout (`HeldContacts.refresh`, by the sweeper): heard when
the kernel last heard the agent's host on that connection, which TCP keep-alive probes keep
asking (primary/server/tcp.py). A host that is gone stops answering them, and its worker
turns inactive as if its polls had stopped.
"""

import threading
from collections.abc import Callable
from dataclasses import dataclass

from primary.store.db import Store

# A contact may wait for the batch while the stored one is younger than this share of the
# heartbeat timeout: the rest is room for a sweeper pass that comes late.
WAIT_SHARE = 0.75
# A held poll's worker is noted as heard this often (a share of the heartbeat timeout).
REFRESH_SHARE = 0.25


def can_wait(last_contact: float | None, now: float, heartbeat_timeout: float) -> bool:
    """Whether a contact at `now` may wait for the next batch: its worker, last stored as
    heard at `last_contact`, is not shown inactive meanwhile."""
    return last_contact is not None and now - last_contact < WAIT_SHARE * heartbeat_timeout


class PendingContacts:
    """The contacts noted since the last batch: each worker's newest, with its load."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[float, str]] = {}

    def note(self, worker_id: str, when: float, load: str) -> None:
        with self._lock:  # two polls of one worker at once: the newer one's stays
            if worker_id not in self._pending or self._pending[worker_id][0] < when:
                self._pending[worker_id] = (when, load)

    def __len__(self) -> int:
        return len(self._pending)

    def write(self, store: Store) -> int:
        """Store the noted contacts in one transaction; how many. A contact stored since
        (written at once, newer) is kept. If the write fails, they wait for the next one."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            with store.transaction() as conn:  # one statement, many rows: 10,000 a pass
                conn.executemany(
                    "UPDATE workers SET last_contact = ?, load = ? WHERE id = ?"
                    " AND (last_contact IS NULL OR last_contact < ?)",
                    [  # sorted: one lock order
                        (when, load, worker_id, when)
                        for worker_id, (when, load) in sorted(pending.items())
                    ],
                )
        except BaseException:
            with self._lock:  # a contact noted meanwhile is newer: it stays
                self._pending = {**pending, **self._pending}
            raise
        return len(pending)


@dataclass
class _Hold:
    worker_id: str
    load: str
    heard: Callable[[float], float | None]
    noted: float


class HeldContacts:
    """The polls held now, each noted as a contact every `refresh` period while it lasts.
    Kept in the order they were last noted, so a refresh looks only at the ones due."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[int, _Hold] = {}
        self._next = 0

    def hold(
        self, worker_id: str, load: str, now: float, heard: Callable[[float], float | None]
    ) -> int:
        """A poll of `worker_id` (which reported `load`) is held from `now`, its contact
        noted then; `heard(now)` says when its client was last heard (None: gone). Returns
        the token that ends it."""
        with self._lock:
            self._next += 1
            self._holds[self._next] = _Hold(worker_id, load, heard, now)
            return self._next

    def end(self, token: int) -> None:
        with self._lock:
            self._holds.pop(token, None)

    def __len__(self) -> int:
        return len(self._holds)

    def refresh(self, now: float, every: float, contacts: PendingContacts) -> int:
        """Note, in `contacts`, each hold last noted `every` seconds ago or more as heard
        when its client last was; how many were due."""
        due = []
        with self._lock:
            while self._holds:
                token = next(iter(self._holds))
                hold = self._holds[token]
                if now - hold.noted < every:
                    break
                del self._holds[token]  # to the end of the order
                hold.noted = now
                self._holds[token] = hold
                due.append(hold)
        for hold in due:  # outside the lock: a system call each
            heard = hold.heard(now)
            if heard is not None:
                contacts.note(hold.worker_id, heard, hold.load)
        return len(due)
