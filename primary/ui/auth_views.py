"""Log in and out of the web UI."""

import math
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

from primary.api.auth import primary_of_app
from primary.fleet.users import check_password
from primary.ui import session as ui_session

bp = Blueprint("auth", __name__)
LOGIN_FAILED = "wrong name or password"


def _safe_next(target: str | None) -> str:
    """Where to go after logging in: only a path on this site, never another host.
    Browsers drop tabs and newlines from URLs and read a backslash as a slash, so
    `/<TAB>/evil.example` would become `//evil.example`: such targets are refused whole."""
    plain = bool(target) and all(ch.isprintable() and ch != "\\" for ch in target)
    if plain and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc:
            return target
    return url_for("ui.workers.index")


@bp.get("/")
def home():
    return redirect(url_for("ui.workers.index"))


@bp.get("/login")
@ui_session.public
def login():
    if ui_session.current_user() is not None:
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", next=request.args.get("next", ""), name="")


@bp.post("/login")
@ui_session.public
def login_submit():
    limiter = current_app.extensions["cifleet.login_limiter"]
    source = request.remote_addr or "unknown"
    name = request.form.get("name", "")
    target = request.form.get("next", "")
    wait = limiter.retry_after(source)
    if wait > 0:
        error = f"too many failed logins from {source}; try again in {math.ceil(wait)} s"
        headers = {"Retry-After": str(math.ceil(wait))}
        return render_template("login.html", error=error, next=target, name=name), 429, headers
    # One message for an unknown name, a disabled user and a wrong password.
    if check_password(primary_of_app().store, name, request.form.get("password", "")) is None:
        limiter.failed(source)
        return render_template("login.html", error=LOGIN_FAILED, next=target, name=name), 401
    ui_session.login_user(name)
    return redirect(_safe_next(target), 303)


@bp.post("/logout")
def logout():
    ui_session.logout_user()
    flash("You are logged out.")
    return redirect(url_for("ui.auth.login"), 303)
