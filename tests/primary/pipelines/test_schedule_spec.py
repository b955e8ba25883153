"""Schedules in a definition (primary/pipelines/schedule_spec.py): what is accepted, and
which slot is the latest at a moment, in the schedule's time zone."""

import datetime

import pytest

from primary.pipelines.schedule_spec import latest_slot, validate_schedule


def fail(field: str, message: str) -> ValueError:
    return ValueError(f"{field}: {message}")


def at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_a_schedule_is_normalised():
    assert validate_schedule("*/5  * * * *", fail) == {"cron": "*/5 * * * *", "timezone": "UTC"}
    given = {"cron": "0 3 * * 1-5", "timezone": "Europe/Berlin"}
    assert validate_schedule(given, fail) == given


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("* * * *", "schedule.cron: must be a cron expression of five fields"),
        ("* * * * * *", "schedule.cron: must be a cron expression of five fields"),
        ("61 * * * *", "schedule.cron: must be a cron expression of five fields"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "schedule.timezone: must be an IANA"),
        ({"cron": "* * * * *", "every": 5}, "schedule.every: unknown field"),
        (["* * * * *"], "schedule: must be a cron expression or a mapping"),
    ],
)
def test_bad_schedules_name_the_field(value, message):
    with pytest.raises(ValueError) as e:
        validate_schedule(value, fail)
    assert str(e.value).startswith(message)


def test_the_latest_slot_is_at_or_before_the_moment():
    every_minute = {"cron": "* * * * *", "timezone": "UTC"}
    assert latest_slot(every_minute, 120.0) == 120.0  # on the slot
    assert latest_slot(every_minute, 179.9) == 120.0
    daily = {"cron": "0 3 * * *", "timezone": "UTC"}
    assert latest_slot(daily, at("2026-12-02T02:59:59+00:00")) == at("2026-12-01T03:00:00+00:00")
    assert latest_slot(daily, at("2026-12-02T03:00:00+00:00")) == at("2026-12-02T03:00:00+00:00")


def test_the_time_zone_is_the_schedules():
    berlin = {"cron": "0 3 * * *", "timezone": "Europe/Berlin"}  # 03:00 there, 02:00 UTC
    assert latest_slot(berlin, at("2026-12-02T02:30:00+00:00")) == at("2026-12-02T03:00:00+01:00")
    # Summer time (UTC+2): 03:00 in Berlin is 01:00 UTC.
    assert latest_slot(berlin, at("2026-07-01T01:30:00+00:00")) == at("2026-07-01T03:00:00+02:00")


@pytest.mark.parametrize("cron", ["0 0 30 2 *", "0 0 31 4 *"])
def test_an_expression_that_names_no_date_is_refused(cron):
    with pytest.raises(ValueError, match="schedule.cron: names no time that ever comes"):
        validate_schedule(cron, fail)
