"""The store's interface: what services call, whichever engine is behind it.

Two engines implement it: SQLite (`sqlite.py`, the embedded default: one file in the data
dir, one primary) and PostgreSQL (`postgres.py`: a server several primaries share). Services
write one SQL both accept: `?` placeholders, the types of `schema.py`, `INSERT ... RETURNING`,
`ON CONFLICT`, and row locks written as PostgreSQL has them (`SELECT ... FOR UPDATE [OF t]
[SKIP LOCKED]`), which the SQLite engine drops (it has one writer at a time anyway). What is
specific to an engine stays in its module. The locking model is in docs/design.md ("Store").
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from primary.errors import ApiError, conflict

log = logging.getLogger("cifleet.primary")

# What the running transaction of each thread noted for after its commit (after_commit).
_notes = threading.local()


def after_commit(note: object) -> None:
    """Note something for the store's commit listeners, from inside a transaction of this
    thread: they get a transaction's notes once it has committed and its locks are free
    (slow work, such as fsyncs, holds up no writer), and none if it rolled back."""
    _notes.items.append(note)


class Row(Protocol):
    """A result row: by column name (`row["id"]`) or position, and `dict(row)`."""

    def __getitem__(self, key: str | int) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...

    def __iter__(self) -> Iterator[Row]: ...


class Connection(Protocol):
    """The connection of one transaction (what `Store.transaction()` yields)."""

    def execute(self, sql: str, params: Sequence = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None: ...

    def query(self, sql: str, params: Sequence = ()) -> list[Row]: ...

    def query_one(self, sql: str, params: Sequence = ()) -> Row | None: ...

    def lock(self, name: str) -> None:
        """Hold the named lock until the transaction ends: one holder at a time across every
        primary of the store (the planner takes one). Free on SQLite, whose writers already
        take turns."""
        ...


class Store(Protocol):
    engine: str  # "sqlite" or "postgresql"
    # Called with the notes (after_commit) of each committed transaction that made any.
    commit_listeners: list[Callable[[list], None]]
    # Called after every write transaction with its seconds (from asking for it, so waiting
    # for the write lock or a connection counts, to its commit or rollback) and whether it
    # committed (the metrics).
    transaction_observers: list[Callable[[float, bool], None]]

    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction. A store that cannot take the change (a full disk, a database
        that is down or refuses writes) raises StorageFull or StorageUnavailable (logged),
        and nothing of the transaction is kept. Not nested."""
        ...

    def query(self, sql: str, params: Sequence = ()) -> list[Row]:
        """Rows of a read: inside this thread's transaction when one is open."""
        ...

    def query_one(self, sql: str, params: Sequence = ()) -> Row | None: ...

    def take_write_failure(self) -> bool:
        """Whether a write failed for lack of storage since the last call (then clears it)."""
        ...

    def migrate(self) -> None: ...

    def close(self) -> None: ...


class Outcome:
    """How a transaction ended: its engine sets `committed` once COMMIT returned."""

    __slots__ = ("committed",)

    def __init__(self) -> None:
        self.committed = False


@contextmanager
def bookkeeping(store: Store) -> Iterator[Outcome]:
    """What every engine's transaction does around its own BEGIN ... COMMIT, entered before
    it asks for its write lock or connection and left after it gave it back: collect this
    thread's after_commit notes, tell the transaction observers its seconds (waiting for the
    lock or a connection included) and whether it committed, and hand the notes of a
    committed one to the commit listeners."""
    notes: list = []
    _notes.items = notes
    outcome = Outcome()
    asked = time.perf_counter()
    try:
        yield outcome
    finally:
        _notes.items = None
        for observe in store.transaction_observers:
            observe(time.perf_counter() - asked, outcome.committed)
    if outcome.committed and notes:
        for listener in store.commit_listeners:
            listener(notes)


def constraint_conflict(exc: Exception) -> ApiError:
    """409 for a change a constraint refused: a concurrent change got there first (two
    registrations of one name at once, say). Services check first; this is the backstop."""
    log.warning("a change was refused by a constraint of the store: %s", exc)
    return conflict("conflict", "the change conflicts with the stored data; nothing was written")
