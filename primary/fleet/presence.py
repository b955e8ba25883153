"""The primaries serving a fleet: each records itself in the store (its name, agent URL,
last seen), so agents learn where else to go, and a primary that starts knows whether
others were serving meanwhile.

A primary beats from its sweeper thread every `beat_interval` (at most 5 s, an eighth of
the heartbeat timeout for short ones); one not seen for three beats is not live. On SQLite
there is only ever one, and agents are told of none (they keep the URL they registered
with).
"""

import contextlib
import logging
import time

from cryptography import x509

from primary.context import Primary
from primary.errors import StorageFull, StorageUnavailable

log = logging.getLogger("cifleet.primary")

BEAT_SECONDS = 5.0
LIVE_BEATS = 3


def beat_interval(heartbeat_timeout: float) -> float:
    """Beat often enough that a primary that died is dropped from the agents' lists, and a
    restart sees that the others served, well within a heartbeat timeout."""
    return min(BEAT_SECONDS, max(heartbeat_timeout / 8, 0.5))


def live_window(heartbeat_timeout: float) -> float:
    return LIVE_BEATS * beat_interval(heartbeat_timeout)


def name_of(primary: Primary) -> str:
    """The name `init` gave this primary (a fleet's first one: `primary`)."""
    return primary.data.settings().get("name", "primary")


def agent_url_of(primary: Primary) -> str:
    """Where agents reach this primary: `serve --agent-url`, else the bind address when it
    is one, else the first name of the server certificate."""
    if primary.config.agent_url:
        return primary.config.agent_url.rstrip("/")
    return f"https://{_host(primary)}:{primary.config.agent_port}"


def api_url_of(primary: Primary) -> str:
    return f"https://{_host(primary)}:{primary.config.api_port}"


def _host(primary: Primary) -> str:
    host = primary.config.bind
    if host in ("0.0.0.0", "", "::"):
        cert = x509.load_pem_x509_certificate(primary.data.server_cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        host = str(next(iter(san)).value)
    return f"[{host}]" if ":" in host else host


def beat(primary: Primary, now: float | None = None) -> None:
    """Record that this primary serves, and read which primaries are live (for the poll
    answers: `primary.agent_urls`). Rate-limited to one write per beat interval."""
    now = time.time() if now is None else now
    interval = beat_interval(primary.config.heartbeat_timeout)
    if now - primary.presence_beat_at < interval:
        return
    name, agent_url = name_of(primary), agent_url_of(primary)
    with primary.store.transaction() as conn:
        conn.execute(
            "INSERT INTO primaries (name, agent_url, api_url, started_at, last_seen)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
            " agent_url = excluded.agent_url, api_url = excluded.api_url,"
            " last_seen = excluded.last_seen",
            (name, agent_url, api_url_of(primary), now, now),
        )
    primary.presence_beat_at = now
    if primary.store.engine == "sqlite":
        return
    window = live_window(primary.config.heartbeat_timeout)
    rows = primary.store.query(
        "SELECT name, agent_url FROM primaries WHERE last_seen >= ? OR name = ? ORDER BY name",
        (now - window, name),
    )
    agent_urls = list(dict.fromkeys(r["agent_url"] for r in rows))
    if agent_urls != primary.agent_urls:
        primary.agent_urls = agent_urls
        # An idle poll is held for minutes: its agent learns of a primary that joined (or
        # stops trying one that left) now, not a hold later, so it can fail over to it.
        primary.waiters.wake_all()
    primary.others_live = any(r["name"] != name for r in rows)


def others_live(primary: Primary, now: float | None = None) -> bool:
    """Whether another primary served the fleet just now: then agents were heard while this
    one was down, and their leases need no grace."""
    now = time.time() if now is None else now
    row = primary.store.query_one(
        "SELECT count(*) AS n FROM primaries WHERE name <> ? AND last_seen >= ?",
        (name_of(primary), now - live_window(primary.config.heartbeat_timeout)),
    )
    return bool(row and row["n"])


def withdraw(primary: Primary) -> None:
    """At a clean stop: agents are told of this primary no longer."""
    with contextlib.suppress(StorageFull, StorageUnavailable), primary.store.transaction() as conn:
        conn.execute("DELETE FROM primaries WHERE name = ?", (name_of(primary),))
