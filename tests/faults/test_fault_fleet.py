"""The fault tests' own judge of "never twice at once", on made-up executions."""

import pytest
from fault_fleet import Execution, Kill, assert_never_twice_at_once


def _unended_then_elsewhere() -> dict[int, list[Execution]]:
    """Attempt 1 on w1 never reported an end; attempt 2 started on w2 at 300."""
    return {7: [Execution(7, 1, "w1", start=100), Execution(7, 2, "w2", start=300)]}


def test_a_host_kill_ends_an_execution_that_never_reported_its_end():
    assert_never_twice_at_once(_unended_then_elsewhere(), {"w1": [Kill(200, host=True)]})


def test_a_kill_of_the_agent_alone_ends_no_execution():
    # Its jobs run on: attempt 1 may still be running when attempt 2 starts.
    with pytest.raises(AssertionError, match="never ended and its host was not killed"):
        assert_never_twice_at_once(_unended_then_elsewhere(), {"w1": [Kill(200, host=False)]})


def test_a_host_kill_after_the_next_start_is_an_overlap():
    with pytest.raises(AssertionError, match="ran twice at once"):
        assert_never_twice_at_once(_unended_then_elsewhere(), {"w1": [Kill(400, host=True)]})


def test_an_execution_that_ended_after_the_next_start_is_an_overlap():
    by_run = {7: [Execution(7, 1, "w1", start=100, end=350), Execution(7, 2, "w2", start=300)]}
    with pytest.raises(AssertionError, match="ran twice at once"):
        assert_never_twice_at_once(by_run)
