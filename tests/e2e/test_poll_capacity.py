"""Held long polls cost no thread: more polls are held at once than the agent port has
threads, and past --max-held-polls a poll is answered at once with poll_after."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet import AgentPeer, init_primary, wait_for

from agent import __version__
from agent.registration import register

HOLD = 5.0  # --heartbeat-timeout 10: polls are held for half of it


@pytest.fixture
def small_primary(fleet_root, request):
    """A primary whose agent port has 2 threads and holds at most the test's number of
    polls at once."""
    p = init_primary(
        fleet_root,
        "--heartbeat-timeout",
        str(2 * HOLD),
        "--primary-worker-slots",
        "0",
        "--agent-threads",
        "2",
        "--max-held-polls",
        str(request.param),
    )
    try:
        p.start()
        yield p
    finally:
        p.close()


def waiting_polls(primary, root, count: int) -> list[tuple[float, dict]]:
    """`count` registered agents each send one waiting poll, all at once: (seconds until
    answered, answer) for each."""
    secret = primary.secret()
    homes = [root / f"w{i}" for i in range(count)]
    for i, home in enumerate(homes):
        register(primary.url, primary.ca_file, secret, f"w{i}", [], 1, home)
    body = json.dumps({"wait": True, "runs": [], "version": __version__, "slots": 1}).encode()
    # Connected (TLS handshake done) before any poll is sent, so on a loaded machine the
    # polls still go out together, well within one hold.
    together = threading.Barrier(count)

    def poll(home):
        context = AgentPeer.of_home(primary, home).context
        conn = http.client.HTTPSConnection(
            "127.0.0.1", primary.agent_port, context=context, timeout=60
        )
        try:
            conn.connect()
            together.wait(60)
            started = time.monotonic()
            conn.request("POST", "/agent/v1/poll", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, answer
            return time.monotonic() - started, answer
        finally:
            conn.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(poll, homes))


def wait_held(primary, count: int) -> None:
    """Until the primary holds `count` polls (its cifleet_polls_held gauge)."""
    wanted = b"cifleet_polls_held %d.0" % count
    wait_for(lambda: wanted in primary.client.request("GET", "/metrics")[2], 30, f"{count} held")


@pytest.mark.parametrize("small_primary", [2], indirect=True)
def test_past_the_maximum_a_poll_is_answered_at_once_with_poll_after(small_primary, fleet_root):
    results = waiting_polls(small_primary, fleet_root, 3)
    turned_away = [answer for _, answer in results if "poll_after" in answer]
    held = [took for took, answer in results if "poll_after" not in answer]
    assert len(turned_away) == 1
    assert turned_away[0]["poll_after"] == HOLD  # as long as a held poll would have taken
    assert len(held) == 2 and min(held) >= HOLD - 0.5


@pytest.mark.parametrize("small_primary", [100], indirect=True)
def test_held_polls_take_no_thread(small_primary, fleet_root):
    """Six polls held at once on two threads, and while they are held a report still gets
    a thread: the held ones wait on the event loop."""
    with ThreadPoolExecutor(1) as side:
        held = side.submit(waiting_polls, small_primary, fleet_root, 6)
        metrics = small_primary.client
        wait_held(small_primary, 6)
        # Both threads free: a poll that does not wait is answered while the six are held.
        answer = AgentPeer.of_home(small_primary, fleet_root / "w0").answer()
        assert answer["assignments"] == []
        assert b"cifleet_polls_held 6.0" in metrics.request("GET", "/metrics")[2]
        results = held.result(timeout=60)
    assert all("poll_after" not in answer for _, answer in results)
    assert min(took for took, _ in results) >= HOLD - 0.5


@pytest.mark.parametrize("small_primary", [100], indirect=True)
def test_a_hold_nothing_woke_answers_as_a_poll_that_does_not_wait(small_primary, fleet_root):
    """A hold that ends at its timeout is answered with what was made before it (no thread,
    no store queries): the same answer, every field, as a poll that does not wait."""
    [(took, held)] = waiting_polls(small_primary, fleet_root, 1)
    assert took >= HOLD - 0.5
    fresh = AgentPeer.of_home(small_primary, fleet_root / "w0").answer()
    assert held == fresh
    assert held["assignments"] == held["cancel"] == [] and held["heartbeat_timeout"] == 2 * HOLD


@pytest.mark.parametrize("small_primary", [100], indirect=True)
def test_slots_set_on_the_host_wake_the_held_poll(small_primary, fleet_root):
    """`cifleet-agent update-worker --slots` wakes the worker's held poll: its answer, with
    the new slots, comes now, not when the hold ends (then the answer made before it would
    still say the old ones)."""
    with ThreadPoolExecutor(1) as side:
        held = side.submit(waiting_polls, small_primary, fleet_root, 1)
        wait_held(small_primary, 1)
        peer = AgentPeer.of_home(small_primary, fleet_root / "w0")
        assert peer.call("POST", "/agent/v1/worker", {"slots": 3})[0] == 200
        [(_, answer)] = held.result(timeout=60)
    assert answer["slots"] == 3
