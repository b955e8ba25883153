"""How many runs to keep, as a pipeline's `keep:` or the fleet's default policy says it. A
pure function: the janitor (primary/runs/retention.py) applies what this accepts.

    keep:
      days: 30      # runs that finished more than 30 days ago are pruned
      runs: 100     # beyond the newest 100 runs of the pipeline, runs are pruned

Either may be left out (no limit of that kind); `keep: {}` keeps everything, whatever the
fleet's default. A run that has not finished is never pruned, nor the pipeline's newest run.
"""

from collections.abc import Callable
from typing import Any

KEEP_KEYS = ("days", "runs")
MAX_DAYS = 36_500
MAX_RUNS = 1_000_000

Fail = Callable[[str, str], Exception]


def validate_keep(value: Any, fail: Fail, field: str = "keep") -> dict[str, int]:
    """The `keep` mapping, normalised: {"days": N} and/or {"runs": N}, whole numbers.
    `field` prefixes the names in errors ("" for the fleet's policy, whose fields are
    top-level)."""

    def name(key: str) -> str:
        return f"{field}.{key}" if field else key

    if not isinstance(value, dict):
        raise fail(field, "must be a mapping with days and/or runs")
    for key in value:
        if key not in KEEP_KEYS:
            raise fail(name(key), f"unknown field; expected one of {', '.join(KEEP_KEYS)}")
    keep: dict[str, int] = {}
    for key, most in (("days", MAX_DAYS), ("runs", MAX_RUNS)):
        if key not in value or value[key] is None:
            continue
        number = value[key]
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= most:
            raise fail(name(key), f"must be a whole number from 1 to {most}")
        keep[key] = number
    return keep
