"""An idle fleet: N agents long-polling one primary. What does holding them cost the primary?

    .venv/bin/python bench/idle_fleet.py [--agents 100,500,1000] [--window 30]
        [--heartbeat-timeout 60]

For each N, a fresh primary; N agents registered over HTTPS the way `cifleet-agent register`
does it (agent.registration.register: a key and CSR each, so each has its own certificate),
then all started at once. The agents are real `agent.worker.Agent` loops, many per bench
process, each in its own threads with its own certificate and its own TLS connections: a
process per agent would take ~30 MB each, which a 1,000-agent fleet on one machine cannot
spare.

Figures per N: seconds from starting the agents until the primary lists all N as active
(each has polled); then, after `--settle` seconds, the primary's CPU (% of one core) and RSS
over `--window` seconds, with no other requests than the agents' polls. The bench process's
own CPU is shown too: on a 2-core machine it competes with the primary for the cores.

An idle agent costs the primary one poll per hold time, and the hold is half the heartbeat
timeout (at most 30 s): `--heartbeat-timeout` shows what a longer or shorter hold costs.
"""

import argparse
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Sampler, bench_dir, init_primary, wait_for

from agent.registration import register
from agent.worker import Agent


def register_fleet(primary, root: Path, count: int, prefix: str = "idle") -> list[Path]:
    """Register `count` agents (PREFIX-N) in parallel; return their homes."""
    secret = primary.secret()

    def one(i: int) -> Path:
        home = root / f"{prefix}-{i}"
        register(primary.url, primary.ca_file, secret, f"{prefix}-{i}", [], 1, home)
        return home

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def count_active(primary) -> int:
    return sum(w["state"] == "active" for w in primary.workers())


def bench_fleet(
    root: Path, count: int, window: float, settle: float, heartbeat: float | None
) -> dict:
    work = root / f"fleet-{count}"
    work.mkdir()
    serve_args = ["--heartbeat-timeout", str(heartbeat)] if heartbeat else []
    primary = init_primary(work, "--primary-worker-slots", "0", *serve_args)
    primary.start()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        started = time.monotonic()
        homes = register_fleet(primary, work, count)
        registered = time.monotonic() - started
        idle = Sampler(primary.proc.pid).measure(min(window, 5))
        agents = [Agent(home, stop) for home in homes]
        started = time.monotonic()
        for agent in agents:
            thread = threading.Thread(target=agent.run, daemon=True)
            thread.start()
            threads.append(thread)
        wait_for(lambda: count_active(primary) == count, 300, "every agent to poll", 0.25)
        connected = time.monotonic() - started
        time.sleep(settle)
        bench_cpu = time.process_time()
        figures = Sampler(primary.proc.pid).measure(window)
        bench_cpu = time.process_time() - bench_cpu
        still_active = count_active(primary)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        primary.close()
    return {
        "agents": count,
        "heartbeat_timeout": heartbeat or "default",
        "registration_seconds": round(registered, 1),
        "seconds_until_all_connected": round(connected, 2),
        "primary": figures,
        "primary_before_agents": idle,
        "active_after_window": still_active,
        "bench_process_cpu_percent": round(100 * bench_cpu / figures["seconds"], 1),
    }


def bench_idle_fleet(
    root: Path,
    sizes: tuple[int, ...] = (100, 500, 1000),
    window: float = 30,
    settle: float = 5,
    heartbeat: float | None = None,
) -> list[dict]:
    return [bench_fleet(root, n, window, settle, heartbeat) for n in sizes]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default="100,500,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per size")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--heartbeat-timeout", type=float, help="the primary's (default 60)")
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.agents.split(","))
    with bench_dir() as tmp:
        logging.basicConfig(filename=Path(tmp) / "agents.log", level=logging.WARNING)
        result = {
            "idle_fleet": bench_idle_fleet(
                Path(tmp), sizes, args.window, args.settle, args.heartbeat_timeout
            )
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
