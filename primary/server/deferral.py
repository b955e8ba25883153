"""How a WSGI view hands a waiting request back to the server, so the wait costs no thread.

The server puts a callable under ENVIRON_KEY into the environ. A view that would block
(a long poll with nothing to say yet) calls it with a `Deferred` and returns a placeholder
response; the server drops that response, awaits `deferred.waiter.wait_async(seconds)` on
its event loop, then calls `finish()` in a service thread and sends what it returns as JSON.
Pure: no event loop or framework here.
"""

from typing import Protocol

ENVIRON_KEY = "cifleet.defer"


class Waitable(Protocol):
    async def wait_async(self, timeout: float) -> bool: ...


class Deferred(Protocol):
    waiter: Waitable
    seconds: float

    def finish(self) -> dict:
        """The answer, in a service thread, once the wait is over."""

    def release(self) -> None:
        """Give back what the wait held, when it ends without an answer from finish() (the
        server stops, or finish() raised): safe to call after finish()."""
