"""When an idle agent tells the primary of its load at once (agent.load.moved)."""

import pytest

from agent.load import moved

BASE = {"load1": 1.0, "load5": 1.0, "cpus": 4, "memory_percent": 50.0}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, False),
        ({"load1": 1.9}, False),  # 0.225 per core
        ({"load1": 2.0}, True),  # a quarter of a core each
        ({"load1": 0.0}, True),  # down counts as much as up
        ({"load5": 2.1}, True),
        ({"memory_percent": 59.9}, False),
        ({"memory_percent": 60.0}, True),
        ({"memory_percent": 39.0}, True),
    ],
)
def test_a_load_moved_by_a_step_the_scheduler_notices(change, expected):
    assert moved(BASE, {**BASE, **change}) is expected


def test_the_step_is_per_core():
    one_core = {**BASE, "cpus": 1}
    assert moved(one_core, {**one_core, "load1": 1.3}) is True
    assert moved(BASE, {**BASE, "load1": 1.3}) is False
