"""Dispatch latency and throughput with real processes on loopback. Prints one JSON object.

    .venv/bin/python bench/dispatch.py [--latency-runs 50] [--throughput-runs 1000]

latency: trigger call -> the first step's process start (the step records `date +%s%N`
as its first act), on an idle worker, sequential runs: p50, p95, max in milliseconds.
throughput: runs of one trivial step over 4 agents x 4 slots (and 4 x 1: one-slot workers
turn a slot over per run), all submitted at once (8 submitting threads): wall time from the
first submit to the last run finished, runs/s, the primary's CPU per run (in that window:
not its start-up), the load average at the end, and how often an
agent refused an assignment (it should never: a refused one waits for the next poll); from
the runs' stamps, the longest gap between assignments, assignment -> start, second attempts.
"""

import argparse
import contextlib
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path

from common import (
    ENGINES,
    Primary,
    bench_dir,
    cpu_seconds,
    init_primary,
    percentile,
    shared_file,
    start_agents,
    stop_all,
    store_for,
    wait_for,
)


def bench_latency(root: Path, runs: int, store: str | None = None) -> dict:
    primary = init_primary(root / "latency", "--primary-worker-slots", "0", store=store)
    (root / "latency").mkdir(exist_ok=True)
    primary.start()
    agents = start_agents(primary, root / "latency", 1, 1)
    marks = shared_file(root / "latency" / "marks.txt")
    primary.pipeline(f"name: lat\njobs:\n  - name: w\n    steps: ['date +%s%N >> {marks}']\n")
    try:
        primary.wait_run(primary.trigger("lat"))  # warm up: first run, home chosen
        latencies = []
        for _ in range(runs):
            before = len(marks.read_text().splitlines())
            time.sleep(0.2)  # the worker is idle again, its long poll re-armed
            started = time.time_ns()
            run_id = primary.trigger("lat")
            primary.wait_run(run_id)
            stamp = int(marks.read_text().splitlines()[before])
            latencies.append((stamp - started) / 1e6)
    finally:
        stop_all(primary, agents)
    return {
        "runs": runs,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "max_ms": round(max(latencies), 2),
    }


def bench_throughput(
    root: Path,
    runs: int,
    agents_n: int = 4,
    slots: int = 4,
    store: str | None = None,
    *,
    prepare: Callable[[Primary], None] | None = None,
    during: Callable[[Primary], AbstractContextManager] | None = None,
) -> dict:
    """`prepare` may change the primary before it starts (its command, its env); `during`
    wraps the measured window, from the first submit to the last run finished (a
    profiler, say: bench/profile_dispatch.py)."""
    work = root / "throughput"
    work.mkdir(exist_ok=True)
    # Overflow at once: with one pipeline, runs beyond its home's slots go to the others.
    work = work / f"{agents_n}x{slots}"
    work.mkdir()
    primary = init_primary(
        work, "--primary-worker-slots", "0", "--home-busy-wait", "0", store=store
    )
    if prepare is not None:
        prepare(primary)
    primary.start()
    agents = start_agents(primary, work, agents_n, slots)
    primary.pipeline("name: trivial\njobs:\n  - name: w\n    steps: ['true']\n")
    try:
        # CPU in the measured window only: the primary's start-up (imports, migrations, the
        # agents' registrations) is not a run's cost.
        cpu_before = cpu_seconds(primary.proc.pid), [cpu_seconds(a.proc.pid) for a in agents]
        with during(primary) if during is not None else contextlib.nullcontext():
            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: primary.trigger("trivial"), range(runs)))
            submitted = time.monotonic() - started

            def done() -> bool:
                counts = primary.client.json("GET", "/api/v1/status")["runs"]
                return counts["success"] + counts["failed"] >= runs

            wait_for(done, 900, "all runs to finish", interval=0.1)
            wall = time.monotonic() - started
        status = primary.client.json("GET", "/api/v1/status")["runs"]
        # Where the two cores went: the primary, the agents (with their job processes).
        cpu = {
            "primary": round(cpu_seconds(primary.proc.pid) - cpu_before[0], 1),
            "agents": round(sum(cpu_seconds(a.proc.pid) for a in agents) - sum(cpu_before[1]), 1),
        }
        load = [round(x, 2) for x in os.getloadavg()]
        timeline = _timeline(primary, runs)
    finally:
        stop_all(primary, agents)
    refused = sum(a.log_path.read_text().count("no free slot") for a in agents)
    return {
        "runs": runs,
        "agents": agents_n,
        "slots_each": slots,
        "submit_seconds": round(submitted, 2),
        "wall_seconds": round(wall, 2),
        "runs_per_second": round(runs / wall, 1),
        "succeeded": status["success"],
        "cpu_seconds": cpu,
        "primary_cpu_ms_per_run": round(cpu["primary"] * 1000 / runs, 1),
        "assignments_refused": refused,
        "load_average_after": load,
        **timeline,
    }


def _stamp(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def _timeline(primary: Primary, runs: int) -> dict:
    """What the runs' own stamps say, read after the measured window: the longest gap
    between two assignments (all runs are submitted at once, so the queue is seldom empty:
    a wait for the sweeper's pass shows as about a second), assignment -> start (the
    agent's side), and runs that needed a second attempt."""
    listed, before = [], ""
    while len(listed) < runs:
        page = primary.client.json("GET", f"/api/v1/runs?limit=100{before}")["runs"]
        if not page:
            break
        listed += page
        before = f"&before={page[-1]['id']}"
    assigned = sorted(_stamp(r["assigned_at"]) for r in listed if r["assigned_at"])
    gaps = [b - a for a, b in zip(assigned, assigned[1:], strict=False)]
    to_start = [
        _stamp(r["started_at"]) - _stamp(r["assigned_at"])
        for r in listed
        if r["assigned_at"] and r["started_at"]
    ]
    return {
        "longest_gap_between_assignments_ms": round(1000 * max(gaps, default=0), 1),
        "assigned_to_started_ms": {
            "p50": round(1000 * statistics.median(to_start), 1) if to_start else None,
            "max": round(1000 * max(to_start), 1) if to_start else None,
        },
        "runs_with_a_second_attempt": sum(1 for r in listed if len(r["attempts"]) > 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--throughput-runs", type=int, default=1000)
    parser.add_argument("--only", choices=("latency", "throughput"))
    parser.add_argument("--engine", choices=ENGINES, default="sqlite", help="the store")
    args = parser.parse_args()
    with (
        bench_dir() as tmp,
        store_for(args.engine) as new_store,
    ):
        root = Path(tmp)
        result = {"engine": args.engine}
        if args.only in (None, "latency"):
            result["dispatch_latency"] = bench_latency(root, args.latency_runs, new_store())
        if args.only in (None, "throughput"):
            result["throughput"] = bench_throughput(root, args.throughput_runs, store=new_store())
            result["throughput_one_slot"] = bench_throughput(
                root, args.throughput_runs, 4, 1, new_store()
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
