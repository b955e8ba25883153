"""Who is logged in to the web UI, and the checks each UI request passes.

The session is Flask's signed cookie (Secure, HttpOnly, SameSite=Lax). It holds the user's
name and a CSRF token, nothing secret. The role is read from the store on every request, so
disabling a user or changing their role takes effect at once. The signing key is kept in
the vault (`ui_session_key`): encrypted at rest like the primary's other secrets, the same
after a restart, never in the repo or on a command line; deleting it logs everyone out.
"""

import functools
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from flask import Flask, g, request, session

from primary.context import Primary
from primary.errors import Forbidden
from primary.store.db import Store

SESSION_KEY_NAME = "ui_session_key"
# Idle time after which a session ends: the cookie's timestamp is renewed on every request.
SESSION_LIFETIME = timedelta(hours=12)
# Age after which a session ends however busy it was: a stolen cookie does not live forever.
SESSION_MAX_AGE = timedelta(days=7)
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
    # setdefault: primaries of one fleet starting at once all end up with the first key.
    return bytes.fromhex(primary.vault.setdefault(SESSION_KEY_NAME, secrets.token_hex(32)))


def configure(app: Flask, primary: Primary) -> None:
    app.secret_key = session_key(primary)
    app.config.update(
        SESSION_COOKIE_NAME="cifleet_session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        # Lax, not Strict: a link to a run from a chat or an email opens logged in. Every
        # state change is a POST with a CSRF token, which Lax does not send cross-site anyway.
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
    )


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def start_session(store: Store, name: str, now: float) -> str:
    """A new session id for `name`, recorded in the store; sessions past their absolute
    age are forgotten on the way."""
    sid = secrets.token_urlsafe(32)
    with store.transaction() as conn:
        conn.execute(
            "DELETE FROM ui_sessions WHERE created_at < ?",
            (now - SESSION_MAX_AGE.total_seconds(),),
        )
        conn.execute(
            "INSERT INTO ui_sessions (sid_hash, user_name, created_at) VALUES (?, ?, ?)",
            (_sid_hash(sid), name, now),
        )
    return sid


def end_session(store: Store, sid: str) -> None:
    with store.transaction() as conn:
        conn.execute("DELETE FROM ui_sessions WHERE sid_hash = ?", (_sid_hash(sid),))


def session_role(store: Store, name: str, sid: str, now: float) -> str | None:
    """The role of the user of a live session: recorded, not ended, younger than
    SESSION_MAX_AGE, and its user still enabled. None otherwise."""
    row = store.query_one(
        "SELECT u.role FROM ui_sessions s JOIN users u ON u.name = s.user_name"
        " WHERE s.sid_hash = ? AND s.user_name = ? AND s.created_at >= ?"
        " AND u.disabled_at IS NULL",
        (_sid_hash(sid), name, now - SESSION_MAX_AGE.total_seconds()),
    )
    return row["role"] if row else None


def current_user() -> User | None:
    """The logged-in user of this request, looked up once per request."""
    if "ui_user" not in g:
        from primary.api.auth import primary_of_app

        name, sid = session.get("user"), session.get("sid")
        role = None
        if isinstance(name, str) and isinstance(sid, str):
            role = session_role(primary_of_app().store, name, sid, time.time())
        g.ui_user = User(name, role) if role else None
    return g.ui_user


def login_user(name: str) -> None:
    """Start a fresh session: nothing from before the login survives (no fixation)."""
    from primary.api.auth import primary_of_app

    session.clear()
    session.permanent = True
    session["user"] = name
    session["sid"] = start_session(primary_of_app().store, name, time.time())
    session["csrf"] = secrets.token_urlsafe(32)
    g.pop("ui_user", None)


def logout_user() -> None:
    from primary.api.auth import primary_of_app

    if isinstance(session.get("sid"), str):
        end_session(primary_of_app().store, session["sid"])
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
