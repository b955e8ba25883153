"""What operators scrape and probe: the Prometheus registry of a primary process
(`GET /metrics`), and readiness (`GET /readyz`). docs/operations.md says what each metric
means.

`metrics_of(primary)` is the process's Metrics (instruments.py), made and hooked up on first
use: its counters of store transactions and run events, and the collector that reads the
fleet's state from the store at scrape time (fleet_state.py). Servers report refused
connections and failed handshakes through it (`connection_refused`, `handshake_failed`).
"""

import threading

from prometheus_client import Gauge, disable_created_metrics

from agent import __version__
from primary.context import Primary
from primary.metrics.fleet_state import FleetCollector
from primary.metrics.instruments import Metrics

_KEY = "metrics"
_making = threading.Lock()


def metrics_of(primary: Primary) -> Metrics:
    """The Metrics of this Primary, made on the first call."""
    metrics = primary.extensions.get(_KEY)
    if metrics is None:
        with _making:
            metrics = primary.extensions.get(_KEY)
            if metrics is None:
                metrics = _install(primary)
                primary.extensions[_KEY] = metrics
    return metrics


def _install(primary: Primary) -> Metrics:
    # No `_created` series beside every counter and histogram: Prometheus 2 stores them as
    # gauges of their own, which doubles the series for nothing. (Process-wide setting.)
    disable_created_metrics()
    metrics = Metrics()
    info = Gauge(
        "cifleet_build_info",
        "Always 1; the cifleet version this primary runs.",
        ["version"],
        registry=metrics.registry,
    )
    info.labels(__version__).set(1)
    metrics.registry.register(FleetCollector(primary, metrics.add_pipelines))
    pipelines = primary.store.query("SELECT name FROM pipelines")
    metrics.add_pipelines([row["name"] for row in pipelines])
    primary.store.commit_listeners.append(metrics.on_commit)
    primary.store.transaction_observers.append(metrics.transaction_done)
    return metrics
