"""The threads a port's WSGI app runs in, handing results back to the event loop.

What `loop.run_in_executor(ThreadPoolExecutor(...))` does, without its middleman: that
makes a concurrent.futures.Future per call (a threading.Condition each) and chains it to an
asyncio future by callbacks. Here the thread settles the asyncio future itself, through one
`call_soon_threadsafe`. Every request of a port passes through this hop; at an idle fleet's
poll rate the middleman was about a tenth of the event loop's time (bench/idle_fleet.py,
py-spy --gil). Threads start on demand, up to `size`, and stay.
"""

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_STOP = None


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # its awaiter gave up (the port stopping): nothing to hand back
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ServiceThreads:
    """At most `size` threads named `name`-N running what `run` hands them, oldest first."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self._name = name
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for work
        self._queued = 0  # work not taken yet
        self._stopped = False

    def run(self, fn: Callable[..., T], *args) -> "asyncio.Future[T]":
        """fn(*args) in one of the threads; its result (or exception) as a future of the
        running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"the {self._name} threads are stopped")
            self._queued += 1
            if self._queued > self._idle and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._serve, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._work.put((loop, future, fn, args))
        return future

    def _serve(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            item = self._work.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            if item is _STOP:
                return
            loop, future, fn, args = item
            if future.cancelled():  # given up on while it queued
                continue
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - the awaiter's to handle
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for it
                loop.call_soon_threadsafe(_settle, future, result, error)
            del item, future, result, error  # not kept alive until the next call

    def shutdown(self) -> None:
        """Finish what runs, drop what still queues (its futures are cancelled), and stop
        the threads."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        while True:
            try:
                item = self._work.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._queued -= 1
            loop, future, _, _ = item
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(future.cancel)
        for _ in threads:
            with self._lock:
                self._queued += 1
            self._work.put(_STOP)
        for thread in threads:
            thread.join()
