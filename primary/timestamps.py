"""Times are stored as Unix seconds and shown as ISO 8601 UTC."""

import datetime


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")
