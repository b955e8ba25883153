"""The pure fence decision and its budget (agent/fence.py): a fenced job is dead before the
primary's lease can expire, and a live agent renews its leases well before it would fence."""

import pytest

from agent.fence import (
    FENCE_FRACTION,
    FENCE_KILL_FRACTION,
    busy_poll_hold,
    fence_after,
    fence_due,
    fence_kill_grace,
)


@pytest.mark.parametrize("heartbeat", [6.0, 30.0, 120.0])
def test_a_run_is_fenced_at_half_the_heartbeat_timeout_after_its_last_renewal(heartbeat):
    sent = 1000.0
    assert fence_after(heartbeat) == heartbeat / 2
    assert not fence_due(sent, sent, heartbeat)
    assert not fence_due(sent, sent + heartbeat / 2 - 0.01, heartbeat)
    assert fence_due(sent, sent + heartbeat / 2, heartbeat)
    assert fence_due(sent, sent + 10 * heartbeat, heartbeat)


def test_nothing_is_fenced_before_a_start_is_confirmed_or_the_timeout_is_known():
    assert not fence_due(None, 1e9, 6.0)
    assert not fence_due(0.0, 1e9, None)
    assert not fence_due(0.0, 1e9, 0.0)


@pytest.mark.parametrize("heartbeat", [2.0, 6.0, 30.0, 600.0])
@pytest.mark.parametrize("kill_grace", [0.5, 10.0, 60.0])
def test_the_budget_ends_every_fenced_job_before_the_lease_expires(heartbeat, kill_grace):
    grace = fence_kill_grace(heartbeat, kill_grace)
    assert grace <= kill_grace
    # Fence, then SIGTERM grace, then SIGKILL: a quarter of H is left before the lease ends.
    assert fence_after(heartbeat) + grace <= (FENCE_FRACTION + FENCE_KILL_FRACTION) * heartbeat
    assert (FENCE_FRACTION + FENCE_KILL_FRACTION) * heartbeat <= 0.75 * heartbeat
    # A busy agent's renewals come at most two held polls apart: half the fence window.
    assert 2 * busy_poll_hold(heartbeat) <= fence_after(heartbeat) / 2
