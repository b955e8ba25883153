"""A pipeline's schedule, as the definition declares it, and its slots. Pure functions.

schedule:
  cron: "0 3 * * 1-5"       # minute hour day-of-month month day-of-week (croniter)
  timezone: Europe/Berlin   # the zone the expression is read in (default UTC)
"""

import datetime
import zoneinfo
from collections.abc import Callable
from typing import Any

from croniter import CroniterBadDateError, croniter

SCHEDULE_KEYS = {"cron", "timezone"}
MAX_CRON_CHARS = 200

Fail = Callable[[str, str], Exception]


def validate_schedule(value: Any, fail: Fail) -> dict[str, str]:
    """The `schedule` mapping, normalised: {cron, timezone}."""
    if isinstance(value, str):
        value = {"cron": value}
    if not isinstance(value, dict):
        raise fail("schedule", "must be a cron expression or a mapping with cron and timezone")
    for key in value:
        if key not in SCHEDULE_KEYS:
            raise fail(f"schedule.{key}", "unknown field; expected cron or timezone")
    cron = value.get("cron")
    if (
        not isinstance(cron, str)
        or len(cron) > MAX_CRON_CHARS
        or len(cron.split()) != 5
        or not croniter.is_valid(cron)
    ):
        raise fail(
            "schedule.cron",
            "must be a cron expression of five fields: minute hour day-of-month month"
            " day-of-week (e.g. '0 3 * * 1-5')",
        )
    zone = value.get("timezone", "UTC")
    if not isinstance(zone, str) or not _known_zone(zone):
        raise fail("schedule.timezone", "must be an IANA time zone, e.g. UTC or Europe/Berlin")
    normal = {"cron": " ".join(cron.split()), "timezone": zone}
    if not _has_slots(normal):
        raise fail("schedule.cron", f"names no time that ever comes ({normal['cron']!r})")
    return normal


def _has_slots(schedule: dict[str, str]) -> bool:
    """Valid fields can still name no date at all (`0 0 30 2 *`, February 30th): croniter
    then raises when asked for one, so ask now rather than in the firing loop."""
    try:
        latest_slot(schedule, datetime.datetime.now(datetime.UTC).timestamp())
    except (CroniterBadDateError, ValueError):
        return False
    return True


def _known_zone(zone: str) -> bool:
    try:
        zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def latest_slot(schedule: dict[str, str], now: float) -> float:
    """The last time at or before `now` (Unix seconds) the schedule names."""
    zone = zoneinfo.ZoneInfo(schedule["timezone"])
    moment = datetime.datetime.fromtimestamp(now, zone)
    before = croniter(schedule["cron"], moment).get_prev(datetime.datetime)
    # get_prev is strictly before `now`: a slot exactly at `now` is the one after `before`.
    after = croniter(schedule["cron"], before).get_next(datetime.datetime)
    return after.timestamp() if after.timestamp() <= now else before.timestamp()
