"""How a WSGI view hands a waiting request back to the server, so the wait costs no thread.

The server puts a callable under ENVIRON_KEY into the environ. A view that would block
(a long poll with nothing to say yet) calls it with a `Deferred` and returns a placeholder
response; the server drops that response, awaits `deferred.waiter.wait_async(seconds)` on
its event loop (ended early when the client's connection closes: then nothing is sent),
then sends as JSON what `unwoken()` returns when the wait ended without a wake-up, or else
what `finish()` returns in a service thread.

Under PEER_HEARD_KEY the server puts `heard(now)`: when the client's host was last heard
on this connection (primary/server/tcp.py), so a view can tell a held client that is there
from one that is gone without a word. Under RECEIVED_KEY: when the server had the request
(time.monotonic(), before its body and its wait for a thread), so a hold can count from it.
Pure: no event loop or framework here.
"""

from typing import Any, Protocol

ENVIRON_KEY = "cifleet.defer"
PEER_HEARD_KEY = "cifleet.peer_heard"
RECEIVED_KEY = "cifleet.received"


class Waitable(Protocol):
    async def wait_async(self, timeout: float, until: Any = None) -> bool: ...


class Deferred(Protocol):
    waiter: Waitable
    seconds: float

    def finish(self) -> dict:
        """The answer, in a service thread, once the wait is over."""

    def unwoken(self) -> dict | None:
        """The answer when the wait ended at its timeout, without a wake-up, if it needs no
        service thread (on the loop, so no blocking); None: finish() makes it."""

    def release(self) -> None:
        """Give back what the wait held, when it ends without an answer from finish() (the
        server stops, or finish() raised): safe to call after finish()."""
