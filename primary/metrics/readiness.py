"""Readiness, for load balancers and service managers (`GET /readyz`): the store answers a
read, every listener serves, and the primary is not shutting down. Liveness (`/healthz`)
only says the process answers."""

import logging

from primary.context import Primary

log = logging.getLogger("cifleet.primary")


def readiness(primary: Primary, stopping: bool) -> tuple[bool, dict]:
    """(ready, what each check found). Nothing in it names a path or an error: the probe
    needs no token, so the details go to the primary's log."""
    checks: dict = {}
    try:
        primary.store.query_one("SELECT 1 FROM workers LIMIT 1")  # reads the store's file
        checks["store"] = "ok"
    except Exception:
        log.exception("readiness: the store cannot be read")
        checks["store"] = "unreachable"
    checks["listeners"] = {
        name: "up" if serving() else "down" for name, serving in sorted(primary.listeners.items())
    }
    checks["stopping"] = stopping
    ready = (
        checks["store"] == "ok"
        and all(state == "up" for state in checks["listeners"].values())
        and not stopping
    )
    return ready, checks
