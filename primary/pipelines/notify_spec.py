"""A pipeline's outgoing webhook (`notify:` in the definition): where run state changes are
posted and which pipeline secret signs them. Pure."""

from typing import Any
from urllib.parse import urlsplit

EVENTS = ("started", "finished")
MAX_URL = 2000


def validate_notify(value: Any, fail) -> dict[str, Any]:
    """`notify: {url: https://..., secret: NAME, events: [started, finished]}` normalised.

    `secret` names a pipeline secret (set like any other) whose value is the HMAC key; it is
    never sent to a worker unless a job names it too. Credentials in the URL are refused:
    the definition is not secret (anyone with a viewer token reads it)."""
    if not isinstance(value, dict):
        raise fail("notify", "must be a mapping with url (and secret, events)")
    unknown = set(value) - {"url", "secret", "events"}
    if unknown:
        raise fail(f"notify.{sorted(unknown)[0]}", "unknown field; expected url, secret, events")
    url = value.get("url")
    if not isinstance(url, str) or not 0 < len(url) <= MAX_URL or not url.isprintable():
        raise fail("notify.url", f"must be an http or https URL of at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise fail("notify.url", "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail("notify.url", "must be an http or https URL with a host")
    if parts.username is not None or parts.password is not None:
        raise fail("notify.url", "must not hold credentials; sign with `secret` instead")
    if parts.fragment:
        raise fail("notify.url", "must not have a #fragment")
    spec: dict[str, Any] = {"url": url}
    secret = value.get("secret")
    if secret is not None:
        if not isinstance(secret, str) or not (secret.isidentifier() and secret.isascii()):
            raise fail("notify.secret", "must be the name of a pipeline secret")
        spec["secret"] = secret
    events = value.get("events", list(EVENTS))
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in EVENTS for e in events)
    ):
        raise fail("notify.events", f"must be a non-empty list of {', '.join(EVENTS)}")
    spec["events"] = [e for e in EVENTS if e in events]
    return spec
