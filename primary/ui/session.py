"""Who is logged in to the web UI, and the checks each UI request passes.

The session is Flask's signed cookie (Secure, HttpOnly, SameSite=Lax). It holds the user's
name and a CSRF token, nothing secret. The role is read from the store on every request, so
disabling a user or changing their role takes effect at once. The signing key is kept in
the vault (`ui_session_key`): encrypted at rest like the primary's other secrets, the same
after a restart, never in the repo or on a command line; deleting it logs everyone out.
"""

import functools
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, current_app, g, request, session

from primary.context import Primary
from primary.errors import Forbidden
from primary.store import Store

SESSION_KEY_NAME = "ui_session_key"
# Idle time after which a session ends: the cookie's timestamp is renewed on every request.
SESSION_LIFETIME = timedelta(hours=12)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# Sent by the UI's own fetch() calls: they get JSON errors and a 401 instead of a redirect.
FETCH_HEADER = "X-Requested-With"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def session_key(primary: Primary) -> bytes:
    """The cookie signing key, made on first use and kept in the vault."""
    try:
        return bytes.fromhex(primary.vault.get(SESSION_KEY_NAME))
    except KeyError:
        key = secrets.token_hex(32)
        primary.vault.set(SESSION_KEY_NAME, key)
        return bytes.fromhex(key)


def configure(app: Flask, primary: Primary) -> None:
    app.secret_key = session_key(primary)
    app.extensions["cifleet.ui_ended_sessions"] = EndedSessions()
    app.config.update(
        SESSION_COOKIE_NAME="cifleet_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to a run from a chat or an email opens logged in. Every
        # state change is a POST with a CSRF token, which Lax does not send cross-site anyway.
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


def active_role(store: Store, name: str) -> str | None:
    """The role of a user who may log in now, or None (unknown or disabled)."""
    row = store.query_one("SELECT role FROM users WHERE name = ? AND disabled_at IS NULL", (name,))
    return row["role"] if row else None


class EndedSessions:
    """Ids of sessions ended by logging out, kept until their cookies would have expired
    anyway, so a copy of a logged-out cookie is refused too. In memory: a restart forgets
    them (the cookie then still ends after SESSION_LIFETIME idle)."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def end(self, sid: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._until = {s: t for s, t in self._until.items() if t > now}
            self._until[sid] = now + SESSION_LIFETIME.total_seconds()

    def __contains__(self, sid: str) -> bool:
        with self._lock:
            return self._until.get(sid, 0.0) > time.monotonic()


def _ended() -> EndedSessions:
    return current_app.extensions["cifleet.ui_ended_sessions"]


def current_user() -> User | None:
    """The logged-in user of this request, looked up once per request."""
    if "ui_user" not in g:
        from primary.auth import primary_of_app

        name, sid = session.get("user"), session.get("sid")
        role = None
        if isinstance(name, str) and isinstance(sid, str) and sid not in _ended():
            role = active_role(primary_of_app().store, name)
        g.ui_user = User(name, role) if role else None
    return g.ui_user


def login_user(name: str) -> None:
    """Start a fresh session: nothing from before the login survives (no fixation)."""
    session.clear()
    session.permanent = True
    session["user"] = name
    session["sid"] = secrets.token_urlsafe(16)
    session["csrf"] = secrets.token_urlsafe(32)
    g.pop("ui_user", None)


def logout_user() -> None:
    if isinstance(session.get("sid"), str):
        _ended().end(session["sid"])
    session.clear()
    g.pop("ui_user", None)


def csrf_token() -> str:
    """This session's CSRF token (anonymous sessions get one too: the login form has it)."""
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csrf_ok() -> bool:
    """Whether an unsafe request carries this session's token, in the X-CSRF-Token header
    or the csrf_token form field. The header is checked first, so a streamed upload can
    send it without the body being parsed as a form."""
    expected = session.get("csrf")
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    return isinstance(expected, str) and hmac.compare_digest(sent.encode(), expected.encode())


def is_fetch() -> bool:
    return request.headers.get(FETCH_HEADER) == "fetch"


def public(view: Callable) -> Callable:
    """Mark a UI view as reachable without logging in (the login page)."""
    view.ui_public = True
    return view


def require_admin(view: Callable) -> Callable:
    """Refuse (403) anyone but an admin, whatever the page showed them."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        user = current_user()
        if user is None or not user.is_admin:
            raise Forbidden("only an admin may do this")
        return view(*args, **kwargs)

    return wrapped
