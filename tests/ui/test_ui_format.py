"""The UI's pure formatters and form parsing (no browser)."""

import datetime

import pytest

from primary.runs.runlog import exit_text
from primary.ui.fleet import parse_tags
from primary.ui.format import ago, badge_class, duration, exit_code, load_text, ordinal, when

NOW = datetime.datetime(2026, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("seconds_before", "text"),
    [
        (0.5, "just now"),
        (42, "42 s ago"),
        (300, "5 min ago"),
        (3 * 3600 + 5, "3 h ago"),
        (2 * 86400, "2 d ago"),
    ],
)
def test_ago(seconds_before, text):
    then = (NOW - datetime.timedelta(seconds=seconds_before)).isoformat()
    assert ago(then, NOW) == text


def test_ago_of_nothing_is_never():
    assert ago(None, NOW) == "never"


def test_load_text():
    assert load_text(None) == "–"
    assert load_text({"draining": False}) == "–"  # polled, but reported no load
    assert load_text({"load1": 0.5, "cpus": 1}) == "0.50 / 1 CPU"
    assert load_text({"load1": 1.234, "cpus": 4, "memory_percent": 40.6}) == (
        "1.23 / 4 CPUs, mem 41%"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0.85, "850 ms"), (12.34, "12.3 s"), (245, "4 min 05 s"), (7380, "2 h 03 min")],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


def test_badge_class():
    assert badge_class("version mismatch") == "badge badge-version-mismatch"
    assert badge_class("timed_out") == "badge badge-timed-out"


def test_tags_as_typed():
    assert parse_tags(" linux, gpu  arm64,,") == ["linux", "gpu", "arm64"]
    assert parse_tags("") == []


def test_exit_codes_and_signals_by_name():
    assert [exit_code(c) for c in (None, 0, 3, -15, -9, -99)] == [
        "–",
        "0",
        "3",
        "SIGTERM",
        "SIGKILL",
        "signal 99",
    ]
    assert [exit_text(c) for c in (None, 2, -15)] == ["", ", exit code 2", ", killed by SIGTERM"]


def test_ordinals_and_times_with_utc_on_hover():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "101st",
        "111th",
    ]
    assert str(when(None)) == "–"
    html = str(when("2026-01-02T11:59:00+00:00"))
    assert html.startswith(
        '<time datetime="2026-01-02T11:59:00+00:00" title="2026-01-02T11:59:00+00:00 UTC">'
    )
