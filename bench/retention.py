"""Dispatch while the janitor prunes: latency of runs started during a large prune, against
the same runs with nothing pruned. Real primary and agent on loopback. Prints one JSON object.

    .venv/bin/python bench/retention.py [--old-runs 20000] [--log-bytes 4096] [--runs 30]

Seeds `--old-runs` finished runs of one pipeline straight into the store (rows and a job
log of `--log-bytes` each, written through the primary's own log store), sets the policy
to keep one run, then measures dispatch latency (trigger -> the first step's process
start, as bench/dispatch.py) for `--runs` sequential runs of another pipeline: first with
nothing to prune, then while `POST /api/v1/retention/prune` deletes the old runs. Reports
p50/p99, how many of the measured runs started while the prune was still going, and the
prune's own rate.
"""

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

from common import (
    ENGINES,
    bench_dir,
    init_primary,
    percentile,
    shared_file,
    start_agents,
    stop_all,
    store_for,
)

from primary.store.datadir import DataDir
from primary.store.engines import open_store

SPEC = json.dumps({"name": "old", "tags": [], "env": {}, "retries_on_lost": 1, "jobs": []})


def seed(data_dir: Path, count: int, log_bytes: int) -> None:
    data = DataDir(data_dir)
    store = open_store(data.store_location())
    if data.shared_store():
        from primary.store.pg_logs import PostgresLogStore

        logs = PostgresLogStore(store)
    else:
        from primary.store.logs import LogStore

        logs = LogStore(data.logs)
    long_ago = time.time() - 400 * 86_400
    line = b"x" * 79 + b"\n"
    body = (line * (log_bytes // len(line) + 1))[:log_bytes]
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO pipelines (name, definition, spec, created_at, updated_at)"
            " VALUES ('old', '', ?, ?, ?)",
            (SPEC, long_ago, long_ago),
        )
    for start in range(0, count, 1000):
        with store.transaction() as conn:
            ids = []
            for _ in range(min(1000, count - start)):
                row = conn.execute(
                    "INSERT INTO runs (pipeline, spec, tags, state, attempt, worker_id,"
                    " worker_name, created_at, queued_at, finished_at)"
                    " VALUES ('old', ?, '[]', 'success', 1, 'w', 'w', ?, ?, ?) RETURNING id",
                    (SPEC, long_ago, long_ago, long_ago),
                ).fetchone()
                ids.append(row["id"])
            conn.executemany(
                "INSERT INTO jobs (run_id, name, position, state, exit_code)"
                " VALUES (?, 'j', 0, 'success', 0)",
                [(i,) for i in ids],
            )
            conn.executemany(
                "INSERT INTO attempts (run_id, attempt, worker_id, worker_name, assigned_at,"
                " ended_at, outcome) VALUES (?, 1, 'w', 'w', ?, ?, 'success')",
                [(i, long_ago, long_ago) for i in ids],
            )
        for i in ids:
            logs.append(i, 1, "j", 0, body)
    store.close()


def latencies(primary, marks: Path, runs: int, until: threading.Event | None = None):
    """Sequential runs' dispatch latencies (ms), and how many started before `until`."""
    found, during = [], 0
    for _ in range(runs):
        before = len(marks.read_text().splitlines())
        time.sleep(0.2)  # the worker is idle again, its long poll re-armed
        started = time.time_ns()
        primary.wait_run(primary.trigger("lat"))
        stamp = int(marks.read_text().splitlines()[before])
        found.append((stamp - started) / 1e6)
        during += until is not None and not until.is_set()
    return found, during


def figures(values: list[float]) -> dict:
    return {
        "p50_ms": round(statistics.median(values), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
    }


def bench_retention(
    root: Path, old_runs: int, log_bytes: int, runs: int, store: str | None = None
) -> dict:
    primary = init_primary(
        root, "--primary-worker-slots", "0", "--retention-interval", "0", store=store
    )
    seed(primary.data_dir, old_runs, log_bytes)
    primary.start()
    agents = start_agents(primary, root, 1, 1)
    marks = shared_file(root / "marks.txt")
    primary.pipeline(  # keep: {} - the policy prunes only the seeded pipeline
        f"name: lat\nkeep: {{}}\njobs:\n  - name: w\n    steps: ['date +%s%N >> {marks}']\n"
    )
    try:
        primary.wait_run(primary.trigger("lat"))  # warm up: first run, home chosen
        quiet, _ = latencies(primary, marks, runs)
        primary.client.json("PUT", "/api/v1/retention", {"runs": 1})
        done = threading.Event()
        report: dict = {"runs": 0, "requests": 0, "longest_batch_ms": 0.0}

        def prune() -> None:
            began = time.monotonic()
            while True:  # each request prunes for at most 20 s
                got = primary.client.json("POST", "/api/v1/retention/prune")["pruned"]
                report["runs"] += got["runs"]
                report["requests"] += 1
                longest = max(report["longest_batch_ms"], got["longest_batch_ms"])
                report["longest_batch_ms"] = longest
                if got["complete"]:
                    break
            report["seconds"] = round(time.monotonic() - began, 2)
            done.set()

        pruner = threading.Thread(target=prune)
        pruner.start()
        busy, during = latencies(primary, marks, runs, done)
        pruner.join()
    finally:
        stop_all(primary, agents)
    return {
        "old_runs": old_runs,
        "log_bytes_each": log_bytes,
        "quiet": figures(quiet),
        "during_prune": {**figures(busy), "runs_started_while_pruning": during},
        "prune": {**report, "runs_per_s": round(report["runs"] / max(report["seconds"], 1e-9))},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--old-runs", type=int, default=20_000)
    parser.add_argument("--log-bytes", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--engine", choices=ENGINES, default="sqlite", help="the store")
    args = parser.parse_args()
    with bench_dir() as root, store_for(args.engine) as new_store:
        result = bench_retention(root, args.old_runs, args.log_bytes, args.runs, new_store())
    print(json.dumps({"engine": args.engine, **result}, indent=2))


if __name__ == "__main__":
    main()
