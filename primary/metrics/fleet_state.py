"""What the store holds about the fleet, read at scrape time: workers by state, each
worker's slots, the queue by the reason runs wait. Every primary on a store reports the
same values (use max(), not sum(), across primaries).

Label values are bounded: worker names are those of the registered workers, states and
queue reasons come from fixed sets (`queue_reason` folds the text a waiting run shows into
one of QUEUE_REASONS).
"""

import logging
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from primary.context import Primary
from primary.runs.placement import candidate_from_row, state_word
from primary.runs.transitions import slots_used

log = logging.getLogger("cifleet.primary")

WORKER_STATES = ("active", "inactive", "locked", "draining", "version_mismatch")
QUEUE_REASONS = (
    "not_planned",  # queued a moment ago; the planner has not looked at it yet
    "home_busy",  # its pipeline's home worker is busy; it waits a few seconds for it
    "no_matching_worker",  # no registered worker has its tags
    "no_free_worker",  # matching workers exist, none can take it now (busy, locked, ...)
    "requeued",  # taken back, lost or re-planned; the planner has not looked at it again
    "other",
)
# The texts placement.choose_worker and transitions.requeue give a waiting run, by prefix.
_REASON_PREFIXES = (
    ("waiting: home worker ", "home_busy"),
    ("waiting: no worker has any of the tags", "no_matching_worker"),
    ("waiting: no worker without tags", "no_matching_worker"),
    ("waiting: none of the ", "no_free_worker"),
    ("re-planned", "requeued"),
    ("taken back", "requeued"),
    ("lost", "requeued"),
)


def queue_reason(reason: str | None) -> str:
    """One of QUEUE_REASONS for the reason text of a queued run."""
    if reason is None:
        return "not_planned"
    for prefix, name in _REASON_PREFIXES:
        if reason.startswith(prefix):
            return name
    return "other"


def _store_up() -> GaugeMetricFamily:
    return GaugeMetricFamily("cifleet_store_up", "1 if this scrape could read the store, else 0.")


class FleetCollector(Collector):
    """A prometheus_client collector that reads the store on every scrape."""

    def __init__(
        self, primary: Primary, pipelines_seen: Callable[[list[str]], None] | None = None
    ) -> None:
        self._primary = primary
        # Told the pipeline names at every scrape (Metrics.add_pipelines starts their run
        # counters at 0, so the first run of a new pipeline counts in increase() too).
        self._pipelines_seen = pipelines_seen

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only (the registry checks them for clashes), without reading the store.
        yield _store_up()
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store_up = _store_up()
        try:
            families = self._families()
            self._fill(*families)
        except Exception:
            log.exception("metrics: cannot read the store")
            store_up.add_metric([], 0)
            yield store_up
            return
        store_up.add_metric([], 1)
        yield store_up
        yield from families

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("cifleet_workers", "Registered workers, by state.", labels=["state"]),
            GaugeMetricFamily(
                "cifleet_worker_state",
                "Always 1, labelled with the state each worker is in.",
                labels=["worker", "state"],
            ),
            GaugeMetricFamily("cifleet_worker_slots", "Slots of each worker.", labels=["worker"]),
            GaugeMetricFamily(
                "cifleet_worker_slots_used",
                "Runs each worker holds (assigned or running).",
                labels=["worker"],
            ),
            GaugeMetricFamily(
                "cifleet_worker_last_contact_timestamp_seconds",
                "When each worker's agent was last heard from (Unix time; 0: never).",
                labels=["worker"],
            ),
            GaugeMetricFamily(
                "cifleet_queue_runs", "Queued runs, by why they wait.", labels=["reason"]
            ),
            GaugeMetricFamily(
                "cifleet_queue_oldest_age_seconds",
                "Seconds the longest-waiting queued run has waited, by why it waits (0: none).",
                labels=["reason"],
            ),
        )

    def _fill(self, workers, state, slots, used, contact, queue, oldest) -> None:
        primary, now = self._primary, time.time()
        store = primary.store
        in_use = slots_used(store)
        counts = dict.fromkeys(WORKER_STATES, 0)
        for row in store.query("SELECT * FROM workers ORDER BY name"):
            candidate = candidate_from_row(
                row, in_use.get(row["id"], 0), now, primary.config.heartbeat_timeout
            )
            word = state_word(candidate).replace(" ", "_")
            counts[word] += 1
            name = row["name"]
            # One series per worker, not one per state: a scrape's cost is its series.
            state.add_metric([name, word], 1)
            slots.add_metric([name], row["slots"])
            used.add_metric([name], candidate.used)
            contact.add_metric([name], row["last_contact"] or 0)
        for word, count in counts.items():
            workers.add_metric([word], count)
        lengths = dict.fromkeys(QUEUE_REASONS, 0)
        queued_since = dict.fromkeys(QUEUE_REASONS, now)
        for row in store.query(
            "SELECT reason, COUNT(*) AS n, MIN(COALESCE(queued_at, created_at)) AS since"
            " FROM runs WHERE state = 'queued' GROUP BY reason"
        ):
            name = queue_reason(row["reason"])
            lengths[name] += row["n"]
            queued_since[name] = min(queued_since[name], row["since"])
        for name in QUEUE_REASONS:
            queue.add_metric([name], lengths[name])
            oldest.add_metric([name], max(now - queued_since[name], 0.0))
        if self._pipelines_seen is not None:
            self._pipelines_seen([r["name"] for r in store.query("SELECT name FROM pipelines")])
