"""Every benchmark, one JSON object. Figures, not pass/fail.

    .venv/bin/python bench/run_all.py            # the sizes the README quotes (about 8 min)
    .venv/bin/python bench/run_all.py --quick    # small sizes, to check the benches work
    .venv/bin/python bench/run_all.py --only logs,footprint
    .venv/bin/python bench/run_all.py --only dispatch_latency,throughput,logs --engines postgresql

The store benchmarks (dispatch latency, throughput, logs) run once per engine of --engines
(default: sqlite,postgresql); PostgreSQL's figures are keyed NAME_postgresql, with a server
of their own (tests/pgcluster.py, fsync on) on the same machine.

Each benchmark is also a script of its own (dispatch.py, logs.py, idle_fleet.py,
footprint.py, scrape.py, hostile_input.py, add_workers.py) with its own options. On a
shared or busy machine the figures are noise: the output records the load average before
and after, so a loaded run can be told apart.
"""

import argparse
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

from add_workers import bench_add_workers
from common import ENGINES, bench_dir, store_for
from dispatch import bench_latency, bench_throughput
from footprint import bench_footprint
from hostile_input import bench_hostile_input
from idle_fleet import bench_idle_fleet
from logs import bench_logs
from retention import bench_retention
from scrape import bench_scrape

FULL = {
    "latency_runs": 50,
    "throughput_runs": 1000,
    "log_megabytes": 50,
    "log_repeat": 3,
    "fleet_sizes": (100, 500, 1000),
    "fleet_window": 30.0,
    "footprint_window": 30.0,
    "scrape_workers": (10, 100, 1000),
    "hostile_repeat": 5,
    "playbook_hosts": 10,
    "retention_old_runs": 20_000,
    "retention_runs": 30,
}
QUICK = {
    "latency_runs": 10,
    "throughput_runs": 100,
    "log_megabytes": 10,
    "log_repeat": 1,
    "fleet_sizes": (20, 50),
    "fleet_window": 5.0,
    "footprint_window": 5.0,
    "scrape_workers": (10, 100),
    "hostile_repeat": 1,
    "playbook_hosts": 3,
    "retention_old_runs": 2_000,
    "retention_runs": 10,
}
# Benchmarks of the store: run on each engine (`store` is a URL for init, or None).
STORE_BENCHES = {
    "dispatch_latency": lambda root, s, store: bench_latency(root, s["latency_runs"], store),
    "throughput": lambda root, s, store: bench_throughput(root, s["throughput_runs"], store=store),
    "throughput_one_slot": lambda root, s, store: bench_throughput(
        root, s["throughput_runs"], 4, 1, store
    ),
    "logs": lambda root, s, store: bench_logs(
        root, s["log_megabytes"], s["log_repeat"], store=store
    ),
    "retention": lambda root, s, store: bench_retention(
        root, s["retention_old_runs"], 4096, s["retention_runs"], store
    ),
}
BENCHES = {
    **STORE_BENCHES,
    "idle_fleet": lambda root, s: bench_idle_fleet(root, s["fleet_sizes"], s["fleet_window"]),
    "agent_footprint": lambda root, s: bench_footprint(root, s["footprint_window"]),
    "scrape": lambda root, s: bench_scrape(root, s["scrape_workers"]),
    "hostile_input": lambda root, s: bench_hostile_input(root, s["hostile_repeat"]),
    "add_workers": lambda root, s: bench_add_workers(root, s["playbook_hosts"]),
}


def machine() -> dict:
    repo = Path(__file__).resolve().parent.parent
    commit = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit or None,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small sizes, a quick check")
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(BENCHES)}")
    parser.add_argument("--engines", default=",".join(ENGINES), help="stores to measure on")
    args = parser.parse_args()
    engines = args.engines.split(",")
    if any(e not in ENGINES for e in engines):
        parser.error(f"--engines: of {', '.join(ENGINES)}")
    names = args.only.split(",") if args.only else list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    sizes = QUICK if args.quick else FULL
    result = {"machine": machine(), "sizes": "quick" if args.quick else "full"}
    started = time.monotonic()
    with bench_dir() as tmp:
        # The idle fleet's agents run in this process; their warnings are not figures.
        logging.basicConfig(filename=Path(tmp) / "agents.log", level=logging.WARNING)
        for engine in engines:
            with store_for(engine) as new_store:
                for name in names:
                    if name not in STORE_BENCHES:
                        continue
                    key = name if engine == "sqlite" else f"{name}_{engine}"
                    root = Path(tmp) / key
                    root.mkdir()
                    result[key] = STORE_BENCHES[name](root, sizes, new_store())
        for name in names:
            if name in STORE_BENCHES:
                continue
            root = Path(tmp) / name
            root.mkdir()
            result[name] = BENCHES[name](root, sizes)
    result["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"]["seconds"] = round(time.monotonic() - started)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
