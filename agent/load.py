"""The host's load as a poll reports it, and when a change is worth telling the primary at
once: an idle agent's poll is held for minutes, and the scheduler places runs by the load
its last poll reported (primary/runs/placement.py: the 1-minute load per core in the score,
the 5-minute one for "overloaded"). Rather than ending every hold early to keep that
fresh, the agent ends its held poll when the load has moved by as much as the scheduler
notices, and polls again with the new figures.
"""

from typing import Any

import psutil

# A change of a quarter of a core's load: a quarter of a 4-slot worker's score, and the
# step a host crosses on its way to or from "overloaded" (5-minute load per core of 1).
LOAD_PER_CPU_STEP = 0.25
MEMORY_PERCENT_STEP = 10.0
# How often an idle agent compares its load with what its held poll reported.
LOAD_CHECK_SECONDS = 10.0


def load_report() -> dict[str, Any]:
    """The host's load, as the poll reports it."""
    load1, load5, _ = psutil.getloadavg()
    return {
        "load1": round(load1, 2),
        "load5": round(load5, 2),
        "cpus": psutil.cpu_count() or 1,
        "memory_percent": psutil.virtual_memory().percent,
    }


def moved(reported: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the load `now` differs from the `reported` one by a step the primary should
    hear of without waiting for the hold to end. Pure."""
    cpus = now["cpus"]  # at least 1 (load_report)
    for key in ("load1", "load5"):
        if abs(now[key] - reported[key]) / cpus >= LOAD_PER_CPU_STEP:
            return True
    return abs(now["memory_percent"] - reported["memory_percent"]) >= MEMORY_PERCENT_STEP
