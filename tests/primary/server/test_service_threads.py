"""The threads a port's app runs in (primary/server/services.py) and the port's budget of
body bytes (primary/server/body.py BodyBudget): results and errors come back to the loop,
the thread count stays bounded, a stop drops what still queues, and room comes back."""

import asyncio
import threading
import time

import pytest

from primary.server.body import BodyBudget
from primary.server.services import ServiceThreads


def test_results_and_errors_come_back_to_the_loop():
    threads = ServiceThreads(2, "t")

    def fails():
        raise ValueError("nope")

    async def main():
        assert await threads.run(lambda a, b: a + b, 2, 3) == 5
        with pytest.raises(ValueError, match="nope"):
            await threads.run(fails)
        # Run in a thread of the pool, not the loop's.
        assert await threads.run(threading.current_thread) is not threading.current_thread()

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()


def test_at_most_size_threads_run_at_once():
    threads = ServiceThreads(3, "bounded")
    running, most = 0, 0
    lock = threading.Lock()

    def work():
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main():
        await asyncio.gather(*(threads.run(work) for _ in range(20)))

    try:
        asyncio.run(main())
    finally:
        threads.shutdown()
    assert most == 3
    assert sum(t.name.startswith("bounded-") for t in threading.enumerate()) == 0


def test_a_shutdown_finishes_what_runs_and_cancels_what_queues():
    threads = ServiceThreads(1, "stopping")
    go_on = threading.Event()
    ran: list[int] = []

    def work(n):
        go_on.wait(5)
        ran.append(n)

    async def main():
        first, second = threads.run(work, 1), threads.run(work, 2)
        await asyncio.sleep(0.1)  # the first is running, the second queues
        stopper = threading.Thread(target=threads.shutdown)
        stopper.start()
        await asyncio.sleep(0.1)
        go_on.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        stopper.join(5)
        with pytest.raises(RuntimeError, match="stopped"):
            threads.run(work, 3)

    asyncio.run(main())
    assert ran == [1]


def test_a_budget_take_waits_for_room_and_gives_up_at_its_timeout():
    async def main():
        held: list[int] = []
        budget = BodyBudget(100, held.append)
        assert await budget.take(80, 1)
        assert not await budget.take(30, 0.1)  # no room came
        waiting = asyncio.ensure_future(budget.take(30, 5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        budget.give(80)
        assert await waiting
        assert budget.held == 30 and held == [80, 0, 30]
        # Larger than the budget: it waits for all of it.
        assert not await budget.take(500, 0.1)
        budget.give(30)
        assert await budget.take(500, 1)
        assert budget.held == 100
        budget.give(500)
        assert budget.held == 0 and not budget._waiting

    asyncio.run(main())
