"""The threads the agent views run the synchronous services in (SQLite, files, the CA).

Two bounded pools: `calls` for what only waits on the store and the disk (polls, reports,
renewals), `bodies` for log chunks, whose thread also waits for the sender's bytes (at most
the body deadline). So slow senders can delay other log chunks, never a poll. A held poll
waits on the event loop, in no thread.
"""

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class ServicePool:
    def __init__(self, calls: int, bodies: int) -> None:
        self._calls = ThreadPoolExecutor(calls, thread_name_prefix="agent-call")
        self._bodies = ThreadPoolExecutor(bodies, thread_name_prefix="agent-body")

    async def call(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a `calls` thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._calls, functools.partial(fn, *args))

    async def call_reading(self, fn: Callable[..., T], *args) -> T:
        """fn(*args) in a `bodies` thread: for a service that reads a request body."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._bodies, functools.partial(fn, *args))

    def shutdown(self) -> None:
        """Wait for the calls in progress; start no more."""
        self._calls.shutdown(wait=True, cancel_futures=True)
        self._bodies.shutdown(wait=True, cancel_futures=True)
