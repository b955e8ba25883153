"""An idle fleet: N agents long-polling one primary. What does holding them cost the primary?

    .venv/bin/python bench/idle_fleet.py [--agents 100,500,1000] [--window 30]
        [--heartbeat-timeout 60] [--light] [--serve-args '--agent-threads 8']
        [--profile FILE]   # --profile: pip install yappi first

For each N, a fresh primary; N agents registered over HTTPS the way `cifleet-agent register`
does it (agent.registration.register: a key and CSR each, so each has its own certificate),
then all started at once. The agents are real `agent.worker.Agent` loops, up to 1,000 per
process, each in its own threads with its own certificate and its own TLS connections: a
process per agent would take ~30 MB each, which a 10,000-agent fleet on one machine cannot
spare, and one process cannot do the TLS of thousands of agents at once.

Figures per N: seconds from starting the agents until the primary lists all N as active
(each has polled); then, after `--settle` seconds, the primary's CPU (% of one core) and RSS
over `--window` seconds, with no other requests than the agents' polls. The bench process's
own CPU is shown too: on a 2-core machine it competes with the primary for the cores.
All agents connect from 127.0.0.1, so the primary is started with
`--handshakes-per-address N` (in a real fleet each agent has its own address).

An idle agent costs the primary one poll per hold time: 120 s (`--idle-poll-hold`, and the
`max_hold` agents send; `--serve-args '--idle-poll-hold 30'` shows what a shorter hold
costs). With `--light`, each agent process prints its failed polls by cause to stderr every
30 s (cumulative): a fleet that cannot hold shows there as a stream of reconnects.
"""

import argparse
import json
import logging
import multiprocessing
import shlex
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
from common import Sampler, bench_dir, init_primary, wait_for
from light_agents import run_light_agents

from agent.registration import register
from agent.worker import Agent
from primary.cli.client import AdminClient


def register_fleet(primary, root: Path, count: int, prefix: str = "idle") -> list[Path]:
    """Register `count` agents (PREFIX-N) in parallel; return their homes."""
    secret = primary.secret()

    def one(i: int) -> Path:
        home = root / f"{prefix}-{i}"
        register(primary.url, primary.ca_file, secret, f"{prefix}-{i}", [], 1, home)
        return home

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def count_active(client: AdminClient) -> int:
    return sum(w["state"] == "active" for w in client.json("GET", "/api/v1/workers")["workers"])


def admin_latency(client: AdminClient, samples: list[float]) -> int:
    """count_active, timing the admin request into `samples` (seconds)."""
    started = time.monotonic()
    active = count_active(client)
    samples.append(time.monotonic() - started)
    return active


AGENTS_PER_PROCESS = 1000


def run_agents(homes: list[Path], stop) -> None:
    """In a process of its own: run the agents of `homes` until `stop` (a process event)."""
    threading.stack_size(256 << 10)  # two threads per agent: its loop and its poll
    agents_stop = threading.Event()
    threads = [threading.Thread(target=Agent(home, agents_stop).run, daemon=True) for home in homes]
    for thread in threads:
        thread.start()
    stop.wait()
    agents_stop.set()
    for thread in threads:
        thread.join(10)


def agents_cpu(processes) -> float:
    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in processes if p.is_alive())


def bench_fleet(
    root: Path,
    count: int,
    window: float,
    settle: float,
    heartbeat: float | None,
    profile: Path | None = None,
    light: bool = False,
    more_serve_args: tuple[str, ...] = (),
) -> dict:
    work = root / f"fleet-{count}"
    work.mkdir()
    serve_args = ["--heartbeat-timeout", str(heartbeat)] if heartbeat else []
    # Every simulated agent connects from 127.0.0.1; in a fleet each has its own address, and
    # at most a few handshakes in progress. Let them all handshake at once, as they would.
    serve_args += ["--handshakes-per-address", str(max(count, 32)), *more_serve_args]
    primary = init_primary(work, "--primary-worker-slots", "0", *serve_args)
    if profile:  # bench/yappi_primary.py: the primary's CPU by function, at its exit
        primary.command = [sys.executable, str(Path(__file__).parent / "yappi_primary.py")]
        primary.env = {"CIFLEET_BENCH_PROFILE": str(profile.absolute())}
    primary.start()
    stop = multiprocessing.get_context("fork").Event()
    answered = multiprocessing.get_context("fork").Value("q", 0)  # polls, light agents only
    processes: list = []
    try:
        started = time.monotonic()
        homes = register_fleet(primary, work, count)
        registered = time.monotonic() - started
        idle = Sampler(primary.proc.pid).measure(min(window, 5))
        started = time.monotonic()
        # Agents share processes (a process per agent would take ~30 MB each), AGENTS_PER_PROCESS
        # each: one Python process cannot do the TLS of thousands of agents at once.
        fork = multiprocessing.get_context("fork")
        for first in range(0, count, AGENTS_PER_PROCESS):
            share = homes[first : first + AGENTS_PER_PROCESS]
            target, args = run_agents, (share, stop)
            if light:
                target = run_light_agents
                args = (share, "127.0.0.1", primary.agent_port, stop, answered)
            process = fork.Process(target=target, args=args, daemon=True)
            process.start()
            processes.append(process)
        # The admin API while the fleet connects: how long listing the workers takes.
        client = AdminClient(primary.url, primary.ca_file, primary.token, timeout=300)
        connecting: list[float] = []
        wait_for(
            lambda: admin_latency(client, connecting) == count, 900, "every agent to poll", 0.25
        )
        connected = time.monotonic() - started
        idle_admin: list[float] = []
        admin_latency(client, idle_admin)
        time.sleep(settle)
        bench_cpu = agents_cpu(processes)
        if profile:
            primary.proc.send_signal(signal.SIGUSR1)
        polls = answered.value
        figures = Sampler(primary.proc.pid).measure(window)
        polls = answered.value - polls
        if profile:
            primary.proc.send_signal(signal.SIGUSR2)
            wait_for(profile.exists, 120, "the profile")
        bench_cpu = agents_cpu(processes) - bench_cpu
        still_active = admin_latency(client, idle_admin)
    finally:
        stop.set()
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
        primary.close()
    return {
        "agents": count,
        "simulated": "light (bench/light_agents.py)" if light else "agent.worker.Agent loops",
        "heartbeat_timeout": heartbeat or "default",
        "registration_seconds": round(registered, 1),
        "seconds_until_all_connected": round(connected, 2),
        "primary": figures,
        "primary_before_agents": idle,
        "active_after_window": still_active,
        "admin_list_workers_seconds_while_connecting_max": round(max(connecting), 2),
        "admin_list_workers_seconds_idle": round(max(idle_admin), 2),
        "agent_processes_cpu_percent": round(100 * bench_cpu / figures["seconds"], 1),
        **(
            {
                "polls_answered_in_window": polls,
                # What an idle agent costs, whatever part of its hold the window caught.
                "primary_cpu_ms_per_poll": round(
                    10 * figures["cpu_percent_of_one_core"] * figures["seconds"] / polls, 2
                )
                if polls
                else None,
            }
            if light
            else {}
        ),
    }


def bench_idle_fleet(
    root: Path,
    sizes: tuple[int, ...] = (100, 500, 1000),
    window: float = 30,
    settle: float = 5,
    heartbeat: float | None = None,
    profile: Path | None = None,
    light: bool = False,
    more_serve_args: tuple[str, ...] = (),
) -> list[dict]:
    results = []
    for n in sizes:
        where = profile and profile.with_name(f"{profile.stem}-{n}{profile.suffix}")
        results.append(
            bench_fleet(root, n, window, settle, heartbeat, where, light, more_serve_args)
        )
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # kept if a later size fails
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", default="100,500,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured per size")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--heartbeat-timeout", type=float, help="the primary's (default 60)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="profile the primary over each window with yappi (bench/yappi_primary.py) into"
        " FILE-N (the CPU figures then include the profiler's cost)",
    )
    parser.add_argument(
        "--light",
        action="store_true",
        help="simulated agents on one event loop per process (bench/light_agents.py), for"
        " fleets of 5,000 and more; without it real agent.worker.Agent loops",
    )
    parser.add_argument(
        "--serve-args", default="", help="more `serve` flags, e.g. '--agent-threads 8'"
    )
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.agents.split(","))
    with bench_dir() as tmp:
        logging.basicConfig(filename=Path(tmp) / "agents.log", level=logging.WARNING)
        result = {
            "idle_fleet": bench_idle_fleet(
                Path(tmp),
                sizes,
                args.window,
                args.settle,
                args.heartbeat_timeout,
                args.profile,
                args.light,
                tuple(shlex.split(args.serve_args)),
            )
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
