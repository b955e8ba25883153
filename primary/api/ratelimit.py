"""Failed-attempt limiting per source: a pure, thread-safe sliding window.

Registration is the one endpoint an anonymous caller can hammer with guesses of the worker
secret; after `limit` failures within `window` seconds a source is refused (429) until the
oldest failure ages out. A source is an IPv4 address or an IPv6 /64
(`primary.server.bounds.source_key`: an address per guess would be free to have). Sources
whose failures all aged out are forgotten, so a scan from many addresses cannot grow the
table without bound.
"""

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from primary.errors import ApiError


class FailureLimiter:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._swept = clock()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.get(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if failures:
            self._failures[key] = failures
        else:
            self._failures.pop(key, None)
        return failures

    def _sweep(self, now: float) -> None:
        """Forget every source whose failures aged out; at most once per window, so the cost
        stays one pass over the table per window."""
        if now - self._swept < self.window:
            return
        self._swept = now
        for key in list(self._failures):
            self._recent(key, now)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again; 0 when it may try now."""
        with self._lock:
            now = self._clock()
            self._sweep(now)
            failures = self._recent(key, now)
            if len(failures) < self.limit:
                return 0.0
            return failures[0] + self.window - now

    def failed(self, key: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(key, now)
            self._failures.setdefault(key, deque()).append(now)

    def __len__(self) -> int:
        """Sources with failures in the table (for tests and figures)."""
        with self._lock:
            return len(self._failures)


def refuse_when_limited(limiter: "FailureLimiter", source: str, what: str) -> None:
    """429 with Retry-After while `source` may not try again; `what` names its failures."""
    wait = limiter.retry_after(source)
    if wait > 0:
        err = ApiError(f"too many {what} from {source}; try again later")
        err.status, err.code = 429, "rate_limited"
        raise err.with_header("Retry-After", str(math.ceil(wait)))
