"""An idle agent's poll is held as long as the agent says it waits (`max_hold`), up to
--idle-poll-hold, and longer than the heartbeat timeout: while it is held its worker counts
as heard (TCP keep-alives, primary/fleet/contacts.py). A poll that says nothing is held as
before, half the heartbeat timeout at most, and so is one of an agent with runs."""

import http.client
import json
import threading
import time

import pytest
from fleet import AgentPeer, init_primary, wait_for

from agent import __version__
from agent.registration import register

HEARTBEAT = 4.0
IDLE_HOLD = 9.0  # --idle-poll-hold: over twice the heartbeat timeout


@pytest.fixture(scope="module")
def idle_primary(tmp_path_factory):
    root = tmp_path_factory.mktemp("idle-hold")
    p = init_primary(
        root,
        "--heartbeat-timeout",
        str(HEARTBEAT),
        "--idle-poll-hold",
        str(IDLE_HOLD),
        "--primary-worker-slots",
        "0",
    )
    try:
        p.start()
        yield p, root
    finally:
        p.close()


def timed_poll(primary, home, **fields) -> tuple[float, dict, list[str]]:
    """One waiting poll of the worker at `home` with `fields` added to its body: (seconds
    until answered, answer, the worker's states seen every 0.5 s while it was held)."""
    body = {"wait": True, "runs": [], "version": __version__, "slots": 1, **fields}
    context = AgentPeer.of_home(primary, home).context
    conn = http.client.HTTPSConnection("127.0.0.1", primary.agent_port, context=context, timeout=60)
    states: list[str] = []
    answered = threading.Event()

    def watch():
        name = home.name
        while not answered.wait(0.5):
            states.append(primary.worker(name)["state"])

    try:
        conn.connect()
        started = time.monotonic()
        conn.request(
            "POST", "/agent/v1/poll", json.dumps(body), {"Content-Type": "application/json"}
        )
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            response = conn.getresponse()
            answer = json.loads(response.read())
            took = time.monotonic() - started
        finally:
            answered.set()
            watcher.join()
        assert response.status == 200, answer
        return took, answer, states
    finally:
        conn.close()


def new_worker(primary, root, name: str):
    home = root / name
    register(primary.url, primary.ca_file, primary.secret(), name, [], 1, home)
    return home


def test_an_idle_poll_is_held_past_the_heartbeat_timeout_and_its_worker_stays_active(
    idle_primary,
):
    primary, root = idle_primary
    home = new_worker(primary, root, "long")
    took, answer, states = timed_poll(primary, home, max_hold=300)
    assert IDLE_HOLD - 0.5 <= took < IDLE_HOLD + 3  # --idle-poll-hold, not the agent's 300
    assert answer["assignments"] == answer["cancel"] == []
    # Held for over twice the heartbeat timeout, and never shown inactive meanwhile.
    assert len(states) >= 2 * HEARTBEAT / 0.5 and set(states) == {"active"}, states


def test_an_idle_poll_is_held_no_longer_than_the_agent_waits(idle_primary):
    primary, root = idle_primary
    home = new_worker(primary, root, "short")
    took, _, _ = timed_poll(primary, home, max_hold=6)
    assert 5.5 <= took < 6 + 3


def test_a_poll_that_states_no_hold_is_held_half_the_heartbeat_timeout(idle_primary):
    """As an agent from before `max_hold` polls: its read timeout is made for that."""
    primary, root = idle_primary
    home = new_worker(primary, root, "older")
    took, _, states = timed_poll(primary, home)
    assert HEARTBEAT / 2 - 0.5 <= took < HEARTBEAT / 2 + 3
    assert set(states) <= {"active"}


@pytest.mark.parametrize("max_hold", [0, -5, "120", True, None, [1]])
def test_a_max_hold_that_is_not_a_positive_number_is_taken_as_none(idle_primary, max_hold):
    primary, root = idle_primary
    home = new_worker(primary, root, f"odd-{abs(hash(repr(max_hold)))}")
    took, _, _ = timed_poll(primary, home, max_hold=max_hold)
    assert HEARTBEAT / 2 - 0.5 <= took < HEARTBEAT / 2 + 3


def held_polls(primary) -> float:
    for line in primary.client.request("GET", "/metrics")[2].decode().splitlines():
        if line.startswith("cifleet_polls_held "):
            return float(line.split()[1])
    raise AssertionError("no cifleet_polls_held on /metrics")


def test_a_held_poll_ends_when_its_client_leaves(idle_primary):
    """Not when the hold would have: the worker is not heard for a connection that is gone."""
    primary, root = idle_primary
    home = new_worker(primary, root, "leaving")
    body = {"wait": True, "runs": [], "version": __version__, "slots": 1, "max_hold": 300}
    context = AgentPeer.of_home(primary, home).context
    conn = http.client.HTTPSConnection("127.0.0.1", primary.agent_port, context=context, timeout=60)
    conn.request("POST", "/agent/v1/poll", json.dumps(body), {"Content-Type": "application/json"})
    wait_for(lambda: held_polls(primary) == 1, 10, "the poll to be held")
    left = time.monotonic()
    conn.close()
    wait_for(lambda: held_polls(primary) == 0, IDLE_HOLD / 2, "the hold to end")
    assert time.monotonic() - left < IDLE_HOLD / 2


def test_a_hold_counts_from_when_the_request_came_not_from_when_it_was_served(idle_primary):
    """The agent's read timeout runs from its send: a poll that waited (here for its body;
    in a reconnecting fleet, for a thread) is held that much less, so it is answered before
    the agent gives up on it."""
    primary, root = idle_primary
    home = new_worker(primary, root, "waited")
    body = json.dumps(
        {"wait": True, "runs": [], "version": __version__, "slots": 1, "max_hold": 6}
    ).encode()
    context = AgentPeer.of_home(primary, home).context
    conn = http.client.HTTPSConnection("127.0.0.1", primary.agent_port, context=context, timeout=60)
    try:
        conn.connect()
        started = time.monotonic()
        conn.putrequest("POST", "/agent/v1/poll")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        time.sleep(3)
        conn.send(body)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["assignments"] == []
        assert 5.5 <= time.monotonic() - started < 6 + 1.5  # not 3 + 6
    finally:
        conn.close()
