"""Two primaries of one fleet on PostgreSQL (a server of the benchmark's own, fsync on), on
this machine. Prints one JSON object.

    .venv/bin/python bench/two_primaries.py [--latency-runs 30] [--throughput-runs 400]
        [--megabytes 50] [--follow-lines 50] [--idle-agents 200] [--window 20]
        [--only latency,throughput,logs,follow,idle]

- dispatch latency across primaries: the agent polls primary B, each run is triggered
  through primary A (so B's held poll is woken by A's NOTIFY): trigger call -> the first
  step's process start, sequential runs, p50/p95/max ms.
- throughput: 4 agents x 4 slots, two registered (and polling) through each primary, runs
  of one trivial step submitted through both at once (8 threads): runs/s, and each
  primary's CPU per run.
- logs: one job prints `--megabytes` of numbered lines through an agent on B, the run
  triggered through A: MB/s from the step's start until the run is done (every byte
  stored), and the log read back through A must be the same bytes.
- log follow lag across primaries: a job on an agent held by A prints a timestamp line
  every 0.1 s (`--follow-lines` of them); a follower reads the job log through B by
  offset every 5 ms, as a client follows a log: from the line's print to its first read
  through B, p50/p95/max ms (the agent's output batching included).
- idle fleet split: `--idle-agents` agent loops in this process, half registered with each
  primary; each primary's CPU and RSS over `--window` seconds.
"""

import argparse
import hashlib
import json
import logging
import statistics
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    BIN,
    Primary,
    Sampler,
    bench_dir,
    cpu_seconds,
    init_primary,
    percentile,
    shared_file,
    start_agents,
    store_for,
    wait_for,
)
from idle_fleet import count_active, register_fleet
from logs import LINE_BYTES, StoredLog, generator, write_expected

from agent.worker import Agent as AgentLoop


def two_primaries(root: Path, store: str, *serve_args: str) -> tuple[Primary, Primary]:
    one = init_primary(root / "a", "--primary-worker-slots", "0", *serve_args, store=store)
    second = root / "b" / "primary-data"
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(second), "--store", store,
         "--vault-key-file", str(one.data_dir / "vault.key"), "--name", "b"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    two = Primary(
        data_dir=second,
        serve_args=["--primary-worker-slots", "0", *serve_args],
        log_path=root / "b" / "primary.log",
    )
    one.start()
    two.start()
    return one, two


def close(primaries, agents) -> None:
    for agent in agents:
        agent.stop()
    for p in primaries:
        p.close()


def bench_latency(root: Path, store: str, runs: int) -> dict:
    root.mkdir()
    one, two = two_primaries(root, store)
    agents = start_agents(two, root / "b", 1, 1)
    marks = shared_file(root / "marks.txt")
    one.pipeline(f"name: lat\njobs:\n  - name: w\n    steps: ['date +%s%N >> {marks}']\n")
    try:
        one.wait_run(one.trigger("lat"))  # warm up
        latencies = []
        for _ in range(runs):
            before = len(marks.read_text().splitlines())
            time.sleep(0.2)  # the agent's poll held again on B
            started = time.time_ns()
            one.wait_run(one.trigger("lat"))
            latencies.append((int(marks.read_text().splitlines()[before]) - started) / 1e6)
    finally:
        close((one, two), agents)
    return {
        "runs": runs,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "max_ms": round(max(latencies), 2),
    }


def bench_throughput(root: Path, store: str, runs: int) -> dict:
    root.mkdir()
    one, two = two_primaries(root, store, "--home-busy-wait", "0")
    agents = start_agents(one, root / "a", 2, 4, "a") + start_agents(two, root / "b", 2, 4, "b")
    one.pipeline("name: trivial\njobs:\n  - name: w\n    steps: ['true']\n")
    try:
        before = {p.data_dir: cpu_seconds(p.proc.pid) for p in (one, two)}
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: (one, two)[i % 2].trigger("trivial"), range(runs)))

        def done() -> bool:
            counts = one.client.json("GET", "/api/v1/status")["runs"]
            return counts["success"] + counts["failed"] >= runs

        wait_for(done, 900, "all runs to finish", interval=0.1)
        wall = time.monotonic() - started
        succeeded = one.client.json("GET", "/api/v1/status")["runs"]["success"]
        cpu = [cpu_seconds(p.proc.pid) - before[p.data_dir] for p in (one, two)]
    finally:
        close((one, two), agents)
    return {
        "runs": runs,
        "agents": "2 x 4 slots on each primary",
        "wall_seconds": round(wall, 2),
        "runs_per_second": round(runs / wall, 1),
        "succeeded": succeeded,
        "primary_cpu_ms_per_run": [round(c * 1000 / runs, 1) for c in cpu],
    }


def bench_logs(root: Path, store: str, megabytes: int, repeat: int = 3) -> dict:
    """As bench/logs.py (the clock stops when the database holds every byte), with the run
    triggered through A and the agent on B; the median of `repeat` runs."""
    root.mkdir()
    one, two = two_primaries(root, store)
    agents = start_agents(two, root / "b", 1, 1)
    lines = megabytes * 10_000
    total = lines * LINE_BYTES
    expected = shared_file(root / "expected.txt")
    digest = write_expected(expected, lines)
    marks = shared_file(root / "marks.txt")
    step = f"date +%s%N > {marks}; {generator('cat', lines, expected)}"
    one.pipeline(f"name: logs\njobs:\n  - name: out\n    steps: ['{step}']\n")
    rates = []
    try:
        for _ in range(repeat):
            run_id = one.trigger("logs")
            stored = StoredLog(one, run_id, store)
            try:
                wait_for(lambda s=stored: s.size() >= total, 600, "every byte stored", 0.002)
                done = time.time_ns()
                assert stored.digest() == digest
            finally:
                stored.close()
            rates.append(total / ((done - int(marks.read_text())) / 1e9) / 1e6)
            assert one.wait_run(run_id, 120)["state"] == "success"
            assert hashlib.sha256(one.job_log(run_id, "out")).hexdigest() == digest
    finally:
        close((one, two), agents)
    return {"bytes": total, "mb_per_s_median": round(statistics.median(rates), 1),
            "mb_per_s_all": [round(r, 1) for r in rates]}  # fmt: skip


FOLLOW_POLL_SECONDS = 0.005


def bench_follow(root: Path, store: str, lines: int) -> dict:
    """Each line's lag from its print (on an agent held by A) to its first read through B."""
    root.mkdir()
    one, two = two_primaries(root, store)
    agents = start_agents(one, root / "a", 1, 1)
    step = f"for i in $(seq {lines}); do date +%s%N; sleep 0.1; done"
    one.pipeline(f"name: follow\njobs:\n  - name: w\n    steps: ['{step}']\n")
    lags = []
    try:
        run_id = one.trigger("follow")
        followed = b""
        deadline = time.monotonic() + 120 + lines
        while len(lags) < lines:
            assert time.monotonic() < deadline, "the follow did not end"
            new = two.job_log(run_id, "w", offset=len(followed))
            seen = time.time_ns()
            complete = followed[: followed.rfind(b"\n") + 1]
            followed += new
            for line in followed[len(complete) :].split(b"\n")[:-1]:
                lags.append((seen - int(line)) / 1e6)
            time.sleep(FOLLOW_POLL_SECONDS)
        assert one.wait_run(run_id, 60)["state"] == "success"
        assert one.job_log(run_id, "w") == followed
    finally:
        close((one, two), agents)
    return {
        "lines": lines,
        "follower_poll_ms": FOLLOW_POLL_SECONDS * 1000,
        "p50_ms": round(statistics.median(lags), 2),
        "p95_ms": round(percentile(lags, 0.95), 2),
        "max_ms": round(max(lags), 2),
    }


def bench_idle(root: Path, store: str, count: int, window: float) -> dict:
    root.mkdir()
    one, two = two_primaries(root, store)
    stop = threading.Event()
    threads = []
    try:
        homes = register_fleet(one, root / "a", count // 2, "a")
        homes += register_fleet(two, root / "b", count - count // 2, "b")
        for home in homes:
            thread = threading.Thread(target=AgentLoop(home, stop).run, daemon=True)
            thread.start()
            threads.append(thread)
        wait_for(lambda: count_active(one) == count, 300, "every agent to poll", 0.25)
        time.sleep(5)
        samplers = {}
        results: dict = {}

        def measure(name: str, p: Primary) -> None:
            results[name] = samplers.setdefault(name, Sampler(p.proc.pid)).measure(window)

        measuring = [threading.Thread(target=measure, args=x) for x in (("a", one), ("b", two))]
        for t in measuring:
            t.start()
        for t in measuring:
            t.join()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        close((one, two), [])
    return {"agents": count, "split": [count // 2, count - count // 2], "primaries": results}


# --only's names, and each one's key in the printed JSON.
SECTIONS = {
    "latency": "dispatch_latency_across",
    "throughput": "throughput",
    "logs": "logs",
    "follow": "log_follow_lag_across",
    "idle": "idle_fleet_split",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--throughput-runs", type=int, default=400)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--follow-lines", type=int, default=50)
    parser.add_argument("--idle-agents", type=int, default=200)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="comma-separated: " + ", ".join(SECTIONS)
    )
    args = parser.parse_args()
    only = args.only.split(",")
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"--only: no section {', '.join(sorted(unknown))}")
    benches = {
        "latency": lambda root, store: bench_latency(root, store, args.latency_runs),
        "throughput": lambda root, store: bench_throughput(root, store, args.throughput_runs),
        "logs": lambda root, store: bench_logs(root, store, args.megabytes),
        "follow": lambda root, store: bench_follow(root, store, args.follow_lines),
        "idle": lambda root, store: bench_idle(root, store, args.idle_agents, args.window),
    }
    with bench_dir() as tmp, store_for("postgresql") as new_store:
        root = Path(tmp)
        logging.basicConfig(filename=root / "agents.log", level=logging.WARNING)
        result = {"engine": "postgresql, two primaries"}
        for section in SECTIONS:
            if section in only:
                result[SECTIONS[section]] = benches[section](root / section, new_store())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
