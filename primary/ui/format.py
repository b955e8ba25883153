"""Small pure formatters the templates use (registered as Jinja filters)."""

import datetime

from flask import Flask
from markupsafe import Markup, escape

from primary.runs.runlog import signal_name


def ago(iso_time: str | None, now: datetime.datetime | None = None) -> str:
    """'never', 'just now', '42 s ago', '5 min ago', '3 h ago' or '2 d ago'."""
    if not iso_time:
        return "never"
    then = datetime.datetime.fromisoformat(iso_time)
    now = now or datetime.datetime.now(datetime.UTC)
    seconds = int((now - then).total_seconds())
    if seconds < 2:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def load_text(load: dict | None) -> str:
    """A worker's reported load: '0.52 / 2 CPUs, mem 41%'; '–' before its first poll."""
    if not load or "load1" not in load:
        return "–"
    cpus = int(load.get("cpus") or 1)
    text = f"{float(load['load1']):.2f} / {cpus} CPU{'s' if cpus != 1 else ''}"
    if "memory_percent" in load:
        text += f", mem {float(load['memory_percent']):.0f}%"
    return text


def duration(seconds: float | None) -> str:
    """'850 ms', '12.3 s', '4 min 05 s', '2 h 03 min'; '' when unknown."""
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def exit_code(code: int | None) -> str:
    """A job's exit code as the jobs table shows it: '3', 'SIGTERM' for a job a signal
    ended (a negative code), '–' for none."""
    if code is None:
        return "–"
    return str(code) if code >= 0 else signal_name(-code)


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th'. Pure."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def when(iso_time: str | None) -> Markup:
    """A <time>: '3 min ago', with the exact UTC time on hover; the page's script puts the
    reader's local time there too (ui.js)."""
    if not iso_time:
        return Markup("–")
    at = escape(iso_time)
    return Markup(f'<time datetime="{at}" title="{at} UTC">{escape(ago(iso_time))}</time>')


def badge_class(state: str) -> str:
    """CSS class of a state badge: 'version mismatch' -> 'badge badge-version-mismatch'."""
    return "badge badge-" + state.replace(" ", "-").replace("_", "-")


def seconds_between(
    start: str | None, end: str | None, now: datetime.datetime | None = None
) -> float | None:
    """Seconds from one ISO time to another, or to now while `end` is None (a job that is
    still running); None before it started."""
    if not start:
        return None
    ended = (
        datetime.datetime.fromisoformat(end) if end else now or datetime.datetime.now(datetime.UTC)
    )
    return max(0.0, (ended - datetime.datetime.fromisoformat(start)).total_seconds())


def bytes_text(size: int) -> str:
    """'812 B', '4.2 KiB', '17.0 MiB', '1.3 GiB'."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):  # noqa: B007 - the unit it stopped at is shown
        value /= 1024
        if value < 1024:
            break
    return f"{value:.1f} {unit}"


def install_filters(app: Flask) -> None:
    app.jinja_env.filters.update(
        ago=ago,
        load_text=load_text,
        duration=duration,
        badge_class=badge_class,
        ordinal=ordinal,
        exit_code=exit_code,
        when=when,
        seconds_between=seconds_between,
        bytes_text=bytes_text,
    )
