"""The pure parts of primary/server and the poll waiters: counts, the refusal log's rate
limit, the body deadline, and a waiter woken from another thread while a loop awaits it."""

import asyncio
import logging
import threading

from primary.context import Waiters
from primary.server.bounds import Counts, RefusalLog, ServerBounds, body_deadline
from primary.server.wsgi import decode_path


def test_counts_refuse_past_the_limit_and_forget_keys_at_zero():
    counts = Counts(2)
    assert counts.take("a") and counts.take("a")
    assert not counts.take("a")
    assert counts.take("b")
    counts.give("a")
    assert counts["a"] == 1 and counts.take("a")
    for _ in range(2):
        counts.give("a")
    counts.give("b")
    assert len(counts) == 0


def test_the_body_deadline_grows_with_what_came():
    bounds = ServerBounds(body_timeout=20, body_min_rate=1000)
    assert body_deadline(100.0, 0, bounds) == 120.0
    assert body_deadline(100.0, 5000, bounds) == 125.0


def test_refusals_are_logged_once_per_client_and_interval(caplog):
    now = [0.0]
    log = RefusalLog(logging.getLogger("test.refusals"), interval=60, lines=2, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "test.refusals"):
        for _ in range(5):
            log.refused("agent", "10.0.0.1", "why")
        log.refused("agent", "10.0.0.2", "why")
        log.refused("agent", "10.0.0.3", "why")  # past `lines`: counted, not logged
        now[0] = 61.0
        log.refused("agent", "10.0.0.1", "again")
    assert [r.getMessage() for r in caplog.records] == [
        "agent port: refused 10.0.0.1: why",
        "agent port: refused 10.0.0.2: why",
        "5 more refused connections in the last 61 s were not logged",
        "agent port: refused 10.0.0.1: again",
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_a_held_poll_on_a_loop_is_woken_from_another_thread():
    waiters = Waiters()

    async def hold() -> tuple[bool, bool]:
        waiter = waiters.arm("w1")
        other = waiters.arm("w2")
        threading.Thread(target=waiters.wake_many, args=(["w1", "nobody"],)).start()
        woken = await waiter.wait_async(30)
        # Not woken: w2 waits out its hold (short here).
        timed_out = await other.wait_async(0.05)
        return woken, timed_out

    assert asyncio.run(hold()) == (True, False)


def test_a_wake_between_arming_and_waiting_is_kept():
    waiters = Waiters()

    async def hold() -> bool:
        waiter = waiters.arm("w1")
        waiters.wake("w1")
        return await waiter.wait_async(30)

    assert asyncio.run(hold()) is True
    # A thread waits on the same waiter as before.
    waiter = waiters.arm("w1")
    threading.Timer(0, waiters.wake_all).start()
    assert waiter.wait(30) is True


def test_paths_are_decoded_but_an_encoded_slash_stays_one_segment():
    assert decode_path(b"/a%20b/%C3%A9") == b"/a b/\xc3\xa9"
    assert decode_path(b"/files/%2Fetc%2fpasswd") == b"/files/%2Fetc%2Fpasswd"
