"""The agent URLs of the fleet's primaries, and the one this agent talks to now.

Several primaries share one store (PostgreSQL): each serves any agent, checks its
certificate against the shared CA and store, and the leases of its runs are rows there, so
an agent may move from one primary to another at any request. It stays with the one that
works; when a request to it gets no HTTP answer (refused, reset, timed out) it moves to
another, picked at random so that the agents of a dead primary spread over the rest.

Where the list comes from, in this order: the URL the agent registered with, the ones the
operator gave (`cifleet-agent run --primaries`, the role's `cifleet_worker_primaries`), and
the live primaries the last poll answer listed (kept in config.json for the next start).
"""

import logging
import random
import threading
import urllib.parse
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)


def valid_url(url: object) -> bool:
    """An https URL with a host: the only kind an agent connects to."""
    if not isinstance(url, str) or len(url) > 512:
        return False
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError:
        return False
    return parts.scheme == "https" and bool(parts.hostname)


def _unique(urls: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(u.rstrip("/") for u in urls if valid_url(u)))


class Primaries:
    """Thread-safe: every client of the agent reads current() at each connect."""

    def __init__(
        self,
        fixed: list[str],
        learned: list[str] | None = None,
        rand: Callable[[list[str]], str] = random.choice,
    ) -> None:
        """`fixed`: the registered URL first, then the operator's; `learned`: from polls."""
        self._fixed = _unique(fixed)
        if not self._fixed:
            raise ValueError("no valid https agent URL to reach a primary at")
        self._learned = _unique(learned or [])
        self._current = self._fixed[0]
        self._choose = rand
        self._lock = threading.Lock()

    def current(self) -> str:
        with self._lock:
            return self._current

    def urls(self) -> list[str]:
        with self._lock:
            return _unique([*self._fixed, *self._learned])

    def failed(self, url: str) -> None:
        """A request to `url` got no answer: move to another primary, if there is one and
        no other request moved already."""
        with self._lock:
            if url != self._current:
                return
            others = [u for u in _unique([*self._fixed, *self._learned]) if u != url]
            if not others:
                return
            self._current = self._choose(others)
            moved_to = self._current
        log.warning("cannot reach the primary at %s; moving to %s", url, moved_to)

    def learn(self, urls: object) -> bool:
        """The live primaries a poll answer listed; True when the list changed."""
        if not isinstance(urls, list):
            return False
        learned = _unique(u for u in urls[:64] if isinstance(u, str))
        with self._lock:
            if learned == self._learned:
                return False
            self._learned = learned
        return True

    def learned(self) -> list[str]:
        with self._lock:
            return list(self._learned)
