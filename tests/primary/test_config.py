"""The holds and probe interval the primary derives from its settings, and the hold an
agent's poll says it waits for (primary/api/long_poll.py)."""

import math
from pathlib import Path

import pytest

from primary.api.long_poll import MAX_ACCEPTED_HOLD, accepted_hold, knows_primaries
from primary.config import PrimaryConfig


def config(**settings) -> PrimaryConfig:
    return PrimaryConfig(data_dir=Path("/nonexistent"), **settings)


def test_an_idle_poll_is_held_as_long_as_the_agent_waits_up_to_the_setting():
    c = config(heartbeat_timeout=60.0, idle_poll_hold=120.0)
    assert c.idle_poll_hold_seconds(300.0) == 120.0
    assert c.idle_poll_hold_seconds(45.0) == 45.0
    # An agent that states no hold is held as before: half the heartbeat timeout, at most 30 s.
    assert c.idle_poll_hold_seconds(None) == 30.0
    assert config(heartbeat_timeout=20.0).idle_poll_hold_seconds(None) == 10.0
    assert config(idle_poll_hold=5.0).idle_poll_hold_seconds(None) == 5.0


def test_keep_alives_probe_six_times_a_heartbeat_timeout_at_least_once_a_second():
    assert config(heartbeat_timeout=60.0).agent_keepalive_seconds == 10
    assert config(heartbeat_timeout=6.0).agent_keepalive_seconds == 1
    assert config(heartbeat_timeout=2.0).agent_keepalive_seconds == 1


@pytest.mark.parametrize(
    ("body", "hold"),
    [
        ({"max_hold": 120}, 120.0),
        ({"max_hold": 7.5}, 7.5),
        ({"max_hold": 1e9}, MAX_ACCEPTED_HOLD),
        ({"max_hold": math.inf}, MAX_ACCEPTED_HOLD),
        ({"max_hold": math.nan}, None),
        ({"max_hold": 0}, None),
        ({"max_hold": -1}, None),
        ({"max_hold": True}, None),
        ({"max_hold": "120"}, None),
        ({"max_hold": None}, None),
        ({}, None),
    ],
)
def test_the_hold_an_agent_accepts(body, hold):
    assert accepted_hold(body) == hold


LIVE = ["https://p1:8444", "https://p2:8444"]


@pytest.mark.parametrize(
    ("body", "live", "knows"),
    [
        ({}, [], True),  # one primary: nothing to learn
        ({"primaries": ["https://p2:8444", "https://p1:8444"]}, LIVE, True),
        ({"primaries": ["https://p1:8444"]}, LIVE, False),  # p2 joined since
        ({"primaries": [*LIVE, "https://p3:8444"]}, LIVE, False),  # p3 left since
        ({"primaries": [*LIVE, 7, None, ["x"]]}, LIVE, True),  # junk beside them is ignored
        ({"primaries": "https://p1:8444"}, LIVE, False),
        ({}, LIVE, False),  # an agent that says nothing is held as before
    ],
)
def test_a_long_hold_waits_until_the_agent_knows_the_primaries(body, live, knows):
    assert knows_primaries(body, live) is knows
