"""How a WSGI view hands a waiting request back to the server, so the wait costs no thread.

The server puts a callable under ENVIRON_KEY into the environ. A view that would block
(a long poll with nothing to say yet) calls it with a `Deferred` and returns a placeholder
response; the server drops that response, awaits `deferred.waiter.wait_async(seconds)` on
its event loop, then sends as JSON what `unwoken()` returns when the wait ended without a
wake-up, or else what `finish()` returns in a service thread.
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

    def unwoken(self) -> dict | None:
        """The answer when the wait ended at its timeout, without a wake-up, if it needs no
        service thread (on the loop, so no blocking); None: finish() makes it."""

    def release(self) -> None:
        """Give back what the wait held, when it ends without an answer from finish() (the
        server stops, or finish() raised): safe to call after finish()."""
