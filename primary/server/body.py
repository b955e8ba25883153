"""Request bodies read against a deadline: `bounds.body_timeout` seconds plus one second per
`bounds.body_min_rate` bytes (mod_reqtimeout's rule), so a slow link is served and a
sender that drips a byte now and then is cut off, whatever its Content-Length says.

`BodyReader.read` runs on the event loop; `read_in_thread` hands a blocking `read(n)` to a
synchronous service running in a pool thread (the log store's `append_from`), which then
waits for the loop to bring each piece.
"""

import asyncio
import concurrent.futures
from collections.abc import Callable

from aiohttp import StreamReader

from primary.server.bounds import ServerBounds, body_deadline


class BodyTimeout(TimeoutError):
    """The body did not arrive in time. A TimeoutError, so readers that treat an OSError as
    the sender going away (the log store: a short body) treat this one alike."""


class BodyReader:
    def __init__(
        self,
        content: StreamReader,
        bounds: ServerBounds,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        self._content = content
        self._bounds = bounds
        self._on_timeout = on_timeout
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.time()
        self.received = 0

    async def read(self, size: int) -> bytes:
        """The next `size` bytes of the body, fewer only at its end. BodyTimeout past the
        deadline; the connection's own errors (a reset) as they are."""
        parts = []
        wanted = size
        while wanted > 0:
            wait = body_deadline(self._started, self.received, self._bounds) - self._loop.time()
            try:
                if wait <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(self._content.read(wanted), wait)
            except TimeoutError:
                if self._on_timeout is not None:
                    self._on_timeout()
                raise BodyTimeout(
                    f"the body missed its deadline: {self._bounds.body_timeout:g} s"
                    f" and 1 s per {self._bounds.body_min_rate} bytes"
                ) from None
            if not chunk:
                break
            parts.append(chunk)
            self.received += len(chunk)
            wanted -= len(chunk)
        return b"".join(parts)

    async def read_all(self, limit: int) -> bytes:
        """The whole body, or ValueError when it is longer than `limit` bytes."""
        data = await self.read(limit + 1)
        if len(data) > limit:
            raise ValueError(f"the body is longer than {limit} bytes")
        return data

    def read_in_thread(self) -> Callable[[int], bytes]:
        """A blocking read(n) for code running in another thread than the loop's."""
        loop = self._loop

        def read(size: int) -> bytes:
            future = asyncio.run_coroutine_threadsafe(self.read(size), loop)
            try:
                return future.result()
            except concurrent.futures.CancelledError:  # the primary is stopping
                raise ConnectionAbortedError("the primary is stopping") from None

        return read


class BodyBudget:
    """The bytes of request bodies a port holds in memory at once, at most `limit`: a body
    is read only once its declared length fits, so a thousand connections each sending the
    largest body allowed cannot make the primary hold a gigabyte. One event loop's: used
    only from its thread, so it needs no lock (every request comes here)."""

    def __init__(self, limit: int, changed: Callable[[int], None] = lambda held: None) -> None:
        self.limit = limit
        self.held = 0
        self._changed = changed
        self._waiting: set[asyncio.Future] = set()  # takes waiting for room, woken by give

    async def take(self, size: int, timeout: float) -> bool:
        """Hold `size` bytes, waiting up to `timeout` seconds for room; False if none came."""
        size = min(size, self.limit)  # a body larger than the whole budget waits for all of it
        if self.held + size > self.limit:  # else no task, timer or future
            try:
                async with asyncio.timeout(timeout):
                    while self.held + size > self.limit:
                        room = asyncio.get_running_loop().create_future()
                        self._waiting.add(room)
                        try:
                            await room
                        finally:
                            self._waiting.discard(room)
            except TimeoutError:
                return False
        self.held += size
        self._changed(self.held)
        return True

    def give(self, size: int) -> None:
        """Give back what a take of `size` held; the takes waiting look again."""
        self.held -= min(size, self.limit)
        self._changed(self.held)
        for room in self._waiting:
            if not room.done():
                room.set_result(None)
