"""Self-fencing: an agent that cannot reach the primary stops its jobs before the primary
can give their runs to another worker, so no run ever executes twice at once.

The primary loses a running run when its lease expires: a heartbeat timeout H after the
last poll that renewed it (or the start that confirmed it), checked by a sweep every second.
The agent cannot tell a dead primary from a cut network, so it counts from its side: from
the moment it SENT the last lease-renewing request that succeeded (the primary received it,
and renewed the lease, no earlier than that). The budget, in fractions of H:

    fence after FENCE_FRACTION (0.5 H) without such a success
    + at most FENCE_KILL_FRACTION (0.25 H) of SIGTERM grace, then SIGKILL
    = every fenced job dead by 0.75 H, a quarter of H before the earliest lease expiry.

A live agent must never fence: while it holds runs the primary holds its polls at most
BUSY_POLL_HOLD_FRACTION (H/8), so a renewal succeeds at least every 2 x H/8 = H/4 plus
network time, half the fence window. The primary imports these constants (config.py), so
both sides keep to the same budget.
"""

FENCE_FRACTION = 0.5
FENCE_KILL_FRACTION = 0.25
BUSY_POLL_HOLD_FRACTION = 0.125


def fence_after(heartbeat_timeout: float) -> float:
    """Seconds without a successful lease renewal after which the agent stops a run."""
    return FENCE_FRACTION * heartbeat_timeout


def fence_kill_grace(heartbeat_timeout: float, kill_grace: float) -> float:
    """The SIGTERM grace of a fenced job: the usual one, cut to fit before the lease ends."""
    return min(kill_grace, FENCE_KILL_FRACTION * heartbeat_timeout)


def busy_poll_hold(heartbeat_timeout: float) -> float:
    """The longest the primary holds the poll of an agent that holds runs."""
    return BUSY_POLL_HOLD_FRACTION * heartbeat_timeout


def fence_due(last_contact: float | None, now: float, heartbeat_timeout: float | None) -> bool:
    """Whether a run must be stopped now. `last_contact`: monotonic send time of the last
    successful request that renewed its lease (None: not confirmed yet, so no job runs);
    `heartbeat_timeout`: H as the primary last said (None: not heard yet)."""
    if last_contact is None or heartbeat_timeout is None or heartbeat_timeout <= 0:
        return False
    return now - last_contact >= fence_after(heartbeat_timeout)
