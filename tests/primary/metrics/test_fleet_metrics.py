"""The primary's metrics, in one process over a real store: what the store collector reads
at scrape time, the run events counted once per committed change, and the bounds of every
label."""

import time

import pytest
from fleet import init_primary
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.keys import csr_pem, new_key
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.fleet import registration
from primary.fleet.workers import set_flag
from primary.metrics import metrics_of
from primary.metrics.causes import HANDSHAKE_CAUSES, HANDSHAKE_STATES, PORTS, REFUSAL_CAUSES
from primary.metrics.fleet_state import QUEUE_REASONS, WORKER_STATES, queue_reason
from primary.pipelines.pipelines import save_pipeline
from primary.runs import dispatch, runs
from primary.runs.placement import Candidate, Home, choose_worker
from primary.runs.transitions import requeue


@pytest.fixture
def primary(tmp_path):
    data_dir = init_primary(tmp_path).data_dir
    primary = open_primary(PrimaryConfig(data_dir=data_dir, primary_worker_slots=0))
    metrics_of(primary)  # as the apps do: counting from the start
    return primary


def register(primary, name: str, tags=(), slots: int = 1) -> dict:
    body = {
        "secret": primary.vault.get("worker_secret"),
        "name": name,
        "tags": list(tags),
        "slots": slots,
        "version": __version__,
        "csr": csr_pem(new_key(), name),
    }
    worker_id = registration.register(primary, body)["worker_id"]
    return dict(primary.store.query_one("SELECT * FROM workers WHERE id = ?", (worker_id,)))


def heard(primary, worker: dict, seconds_ago: float = 0.0) -> None:
    with primary.store.transaction() as conn:
        conn.execute(
            "UPDATE workers SET last_contact = ? WHERE id = ?",
            (time.time() - seconds_ago, worker["id"]),
        )


def scrape(primary) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} of one scrape."""
    text = generate_latest(metrics_of(primary).registry).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def test_workers_slots_and_the_queue_are_read_from_the_store(primary):
    idle = register(primary, "idle", slots=3)
    heard(primary, idle)
    register(primary, "silent")  # never polled: inactive
    locked = register(primary, "locked-one", tags=["gpu"])
    heard(primary, locked)
    set_flag(primary, locked["id"], "locked", True)
    save_pipeline(primary, "name: plain\njobs:\n  - name: a\n    steps: ['true']\n")
    save_pipeline(primary, "name: arm\ntags: [arm]\njobs:\n  - name: a\n    steps: ['true']\n")
    save_pipeline(primary, "name: gpu\ntags: [gpu]\njobs:\n  - name: a\n    steps: ['true']\n")
    planned = runs.create_run(primary, "plain")  # idle takes it: a slot in use
    for _ in range(2):
        runs.create_run(primary, "arm")  # nobody has the tag
    runs.create_run(primary, "gpu")  # only a locked worker has it
    with primary.store.transaction() as conn:  # as if queued 90 s ago
        conn.execute("UPDATE runs SET queued_at = queued_at - 90 WHERE pipeline = 'arm'")

    samples = scrape(primary)
    assert value(samples, "cifleet_store_up") == 1
    assert {k[0][1]: v for k, v in samples["cifleet_workers"].items()} == {
        "active": 1,
        "inactive": 1,
        "locked": 1,
        "draining": 0,
        "version_mismatch": 0,
    }
    states = {dict(k)["worker"]: dict(k)["state"] for k in samples["cifleet_worker_state"]}
    assert states == {"idle": "active", "silent": "inactive", "locked-one": "locked"}
    assert set(samples["cifleet_worker_state"].values()) == {1}
    assert value(samples, "cifleet_worker_slots", worker="idle") == 3
    assert value(samples, "cifleet_worker_slots_used", worker="idle") == 1
    assert value(samples, "cifleet_worker_slots_used", worker="silent") == 0
    assert value(samples, "cifleet_worker_last_contact_timestamp_seconds", worker="silent") == 0
    assert primary.store.query_one("SELECT state FROM runs WHERE id = ?", (planned,))[0] == (
        "assigned"
    )
    queue = {k[0][1]: v for k, v in samples["cifleet_queue_runs"].items()}
    assert queue == {
        "not_planned": 0,
        "home_busy": 0,
        "no_matching_worker": 2,
        "no_free_worker": 1,
        "requeued": 0,
        "other": 0,
    }
    oldest = {k[0][1]: v for k, v in samples["cifleet_queue_oldest_age_seconds"].items()}
    assert 90 <= oldest["no_matching_worker"] < 120
    assert 0 <= oldest["no_free_worker"] < 30
    assert oldest["home_busy"] == 0


def test_a_store_that_cannot_be_read_is_reported_not_raised(primary, tmp_path):
    metrics_of(primary)
    primary.store.close()
    primary.store.path = tmp_path / "no" / "such" / "dir" / "cifleet.db"  # cannot be opened
    samples = scrape(primary)
    assert value(samples, "cifleet_store_up") == 0
    assert "cifleet_workers" not in samples
    assert "process_cpu_seconds_total" in samples  # the rest of the scrape is there


def start_and_run(primary, worker: dict, run_id: int) -> None:
    dispatch.start_run(primary, worker, run_id, 1)
    dispatch.job_status(primary, worker, run_id, "a", {"attempt": 1, "state": "running"})


def test_run_events_are_counted_once_per_committed_change(primary):
    worker = register(primary, "w1")
    heard(primary, worker)
    save_pipeline(primary, "name: p\njobs:\n  - name: a\n    steps: ['true']\n")
    scrape(primary)  # a scrape sees the new pipeline: its counters start at 0
    run_id = runs.create_run(primary, "p")
    start_and_run(primary, worker, run_id)
    # The agent repeats a report it got no answer for: counted once.
    dispatch.job_status(primary, worker, run_id, "a", {"attempt": 1, "state": "running"})
    primary.logs.append(run_id, 1, "a", 0, b"ok\n")
    last = {"name": "a", "state": "success", "exit_code": 0, "log_size": 3}
    dispatch.finish_run(primary, worker, run_id, 1, last)
    dispatch.finish_run(primary, worker, run_id, 1, last)
    samples = scrape(primary)
    assert value(samples, "cifleet_runs_finished_total", pipeline="p", state="success") == 1
    assert value(samples, "cifleet_runs_finished_total", pipeline="p", state="failed") == 0
    assert value(samples, "cifleet_dispatch_latency_seconds_count") == 1
    assert value(samples, "cifleet_run_duration_seconds_count") == 1
    assert value(samples, "cifleet_store_transaction_seconds_count", outcome="commit") > 0

    # Cancelled before it started: a final state, but no duration and no dispatch.
    cancelled = runs.create_run(primary, "p")
    runs.cancel_run(primary, cancelled)
    samples = scrape(primary)
    assert value(samples, "cifleet_runs_finished_total", pipeline="p", state="cancelled") == 1
    assert value(samples, "cifleet_run_duration_seconds_count") == 1
    assert value(samples, "cifleet_dispatch_latency_seconds_count") == 1


def test_a_rolled_back_change_counts_nothing(primary):
    worker = register(primary, "w1")
    heard(primary, worker)
    save_pipeline(primary, "name: p\njobs:\n  - name: a\n    steps: ['true']\n")
    run_id = runs.create_run(primary, "p")
    start_and_run(primary, worker, run_id)
    before = scrape(primary)
    with pytest.raises(RuntimeError), primary.store.transaction() as conn:
        from primary.runs.transitions import end_run

        end_run(conn, run_id, "failed", time.time())
        raise RuntimeError("something after it failed")
    after = scrape(primary)
    assert value(after, "cifleet_runs_finished_total", pipeline="p", state="failed") == 0
    assert value(after, "cifleet_run_duration_seconds_count") == 0
    rollbacks = "cifleet_store_transaction_seconds_count"
    assert (
        value(after, rollbacks, outcome="rollback")
        == value(before, rollbacks, outcome="rollback") + 1
    )


def test_queue_reasons_name_every_text_the_planner_and_requeue_give():
    busy = Candidate("w-1", "b1", ("linux",), slots=1, used=1, active=True)
    cases = {
        "home_busy": choose_worker(("linux",), [busy], Home("w-1", waited=0.0)).waiting,
        "no_matching_worker": choose_worker(("arm",), [busy]).waiting,
        "no_free_worker": choose_worker(("linux",), [busy]).waiting,
    }
    assert choose_worker((), []).waiting.startswith("waiting: no worker without tags")
    assert queue_reason(choose_worker((), []).waiting) == "no_matching_worker"
    for expected, text in cases.items():
        assert text is not None
        assert queue_reason(text) == expected, text
    assert queue_reason(None) == "not_planned"


def test_a_requeued_run_waits_as_requeued_until_the_planner_sees_it(primary):
    save_pipeline(primary, "name: p\ntags: [x]\njobs:\n  - name: a\n    steps: ['true']\n")
    run_id = runs.create_run(primary, "p")
    reasons = []
    for why in ("re-planned: w1 is locked", "taken back: w1 did not confirm", "lost: w1 died"):
        with primary.store.transaction() as conn:
            requeue(conn, run_id, why, time.time())
        row = primary.store.query_one("SELECT reason FROM runs WHERE id = ?", (run_id,))
        reasons.append(queue_reason(row["reason"]))
    assert reasons == ["requeued"] * 3


@pytest.mark.parametrize("text", ["", "anything at all", "waiting:", "\x00", "é" * 500])
def test_any_reason_text_is_one_of_the_bounded_set(text):
    assert queue_reason(text) in QUEUE_REASONS


def test_labels_are_bounded_whatever_a_server_reports(primary):
    metrics = metrics_of(primary)
    metrics.connection_refused("public", "connection_limit")
    metrics.connection_refused("8443", "a made-up cause")  # neither is known
    metrics.handshake_failed("agent", "no_client_certificate")
    metrics.handshake_failed("agent", "x" * 10_000)
    samples = scrape(primary)
    refused = samples["cifleet_connections_refused_total"]
    # One series more: the unknown port and cause, both counted as "other".
    assert len(refused) == len(PORTS) * len(REFUSAL_CAUSES) + 1
    refused_public = value(
        samples, "cifleet_connections_refused_total", port="public", cause="connection_limit"
    )
    assert refused_public == 1
    assert value(samples, "cifleet_connections_refused_total", port="other", cause="other") == 1
    failures = samples["cifleet_tls_handshake_failures_total"]
    assert len(failures) == len(PORTS) * len(HANDSHAKE_CAUSES)  # a known port: none added
    no_cert = value(
        samples, "cifleet_tls_handshake_failures_total", port="agent", cause="no_client_certificate"
    )
    assert no_cert == 1
    assert value(samples, "cifleet_tls_handshake_failures_total", port="agent", cause="other") == 1


# Every label of every series, and where its values come from: a fixed set, or names of
# things an admin registered (workers, pipelines). Never a run id or a free text.
FIXED_LABELS = {
    "state": set(WORKER_STATES)
    | {"success", "failed", "cancelled", "lost", "timed_out"}
    | set(HANDSHAKE_STATES),
    "reason": set(QUEUE_REASONS),
    "port": set(PORTS) | {"other"},
    "cause": set(REFUSAL_CAUSES) | set(HANDSHAKE_CAUSES),
    "outcome": {"commit", "rollback"},
}
NAMED_LABELS = {"worker", "pipeline"}
LIBRARY_LABELS = {"le", "version", "generation", "implementation", "major", "minor", "patchlevel"}


def test_no_series_has_a_label_outside_the_bounded_sets(primary):
    workers = [register(primary, f"w{i}") for i in range(3)]
    for w in workers:
        heard(primary, w)
    save_pipeline(primary, "name: p\njobs:\n  - name: a\n    steps: ['true']\n")
    run_ids = [runs.create_run(primary, "p") for _ in range(5)]
    for run_id in run_ids:
        runs.cancel_run(primary, run_id)
    names = {w["name"] for w in workers} | {"p"}
    text = generate_latest(metrics_of(primary).registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label, label_value in sample.labels.items():
                if label in FIXED_LABELS:
                    assert label_value in FIXED_LABELS[label], (sample.name, label, label_value)
                elif label in NAMED_LABELS:
                    assert label_value in names, (sample.name, label, label_value)
                else:
                    assert label in LIBRARY_LABELS, (sample.name, label)
