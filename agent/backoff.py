"""Jittered exponential backoff for reconnecting to the primary.

Full jitter (a uniform delay between 0 and the current ceiling) spreads a fleet's retries
out, so a primary that comes back is not hit by every agent at the same instant.
"""

import random
from collections.abc import Callable

INITIAL_SECONDS = 0.5
FACTOR = 2.0
CAP_SECONDS = 30.0


class Backoff:
    def __init__(
        self,
        initial: float = INITIAL_SECONDS,
        factor: float = FACTOR,
        cap: float = CAP_SECONDS,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self._rand = rand
        self._failures = 0

    def ceiling(self) -> float:
        """The largest delay the next call to next_delay() may return."""
        # Stop growing the exponent once capped so it never overflows.
        return min(self.cap, self.initial * self.factor ** min(self._failures, 64))

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before retrying."""
        delay = self._rand() * self.ceiling()
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Call after a success: the next failure starts from the initial delay again."""
        self._failures = 0


def short_pause(low: float = 0.5, high: float = 1.0) -> float:
    """A small jittered pause, e.g. between polls the primary answered at once with nothing."""
    return random.uniform(low, high)


def poll_pause(poll_after: object, longest: float) -> float:
    """The pause after a poll answered at once with nothing: the `poll_after` the primary
    asked for (it had no thread to hold the poll on), at most `longest`, jittered so the
    agents it turned away do not come back together; else a short pause."""
    if isinstance(poll_after, int | float) and not isinstance(poll_after, bool) and poll_after > 0:
        return random.uniform(0.5, 1.0) * min(poll_after, longest)
    return short_pause()
