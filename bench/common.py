"""What the benchmark scripts share: real primaries and agents (tests/fleet.py), process
sampling, percentiles. Each bench script stays runnable alone and returns a dict of figures.
"""

import contextlib
import importlib.util
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


def load_test_module(name: str):
    """tests/NAME.py, loaded by path: putting tests/ on sys.path would let its agent/ and
    primary/ test folders shadow the real packages."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parent.parent / "tests" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


load_test_module("ports")  # fleet imports these two
load_test_module("leftovers")
_fleet = load_test_module("fleet")
_pgcluster = load_test_module("pgcluster")
ENGINES = ("sqlite", "postgresql")
Agent, Primary, BIN = _fleet.Agent, _fleet.Primary, _fleet.BIN
init_primary, register_agent, wait_for = _fleet.init_primary, _fleet.register_agent, _fleet.wait_for
shared_file = _fleet.shared_file  # a file jobs under their own uids may append to

__all__ = [
    "BIN",
    "ENGINES",
    "Agent",
    "Primary",
    "Sampler",
    "bench_dir",
    "cpu_seconds",
    "init_primary",
    "load_test_module",
    "percentile",
    "shared_file",
    "start_agents",
    "stop_all",
    "store_for",
    "wait_for",
    "write_random_tree",
]


@contextlib.contextmanager
def bench_dir() -> Iterator[Path]:
    """A temporary folder for a benchmark's primary and agents. Passable for others (0711):
    agents running as root run their jobs as uids of their own, which must reach their
    workspaces (agent/identity.py)."""
    with tempfile.TemporaryDirectory(prefix="cifleet-bench-") as tmp:
        os.chmod(tmp, 0o711)
        yield Path(tmp)


@contextlib.contextmanager
def store_for(engine: str):
    """A function giving what `init --store` gets for `engine`, one per primary: None
    (SQLite in the data dir), or the URL of a new database in a PostgreSQL server of the
    benchmark's own, with its durable defaults (fsync on), on a Unix socket; the server
    runs on the same 2 cores."""
    if engine == "sqlite":
        yield lambda: None
        return
    with _pgcluster.PgCluster.running(fast=False) as cluster:
        yield lambda: cluster.create_database("bench")


def write_random_tree(folder: Path, size_mb: int, files: int) -> None:
    """`files` files of random bytes (no delta or compression helps), `size_mb` MB in all,
    in 50 folders: a repository's tree for the git benchmarks."""
    each = size_mb * 1024 * 1024 // files
    for i in range(files):
        path = folder / f"d{i % 50:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(each))


def start_agents(
    primary: Primary, root: Path, count: int, slots: int, prefix: str = "bench"
) -> list[Agent]:
    """Register and start `count` agent processes (PREFIX-N); return once all are active."""
    agents = []
    for i in range(count):
        name = f"{prefix}-{i}"
        result = register_agent(primary, root, name, slots=slots)
        assert result.returncode == 0, result.stderr
        agent = Agent(name=name, home=root / name, log_path=root / f"{name}.log")
        agent.start()
        agents.append(agent)
    wait_for(
        lambda: all((w := primary.worker(a.name)) and w["state"] == "active" for a in agents),
        60,
        "agents to be active",
    )
    return agents


def stop_all(primary: Primary, agents: list[Agent]) -> None:
    for agent in agents:
        agent.stop()
    primary.close()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its reaped children (the agents' job processes)."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Sampler:
    """CPU % of one core and RSS of one process over a window, sampled in a thread.

    CPU % is the process's CPU time used in the window divided by the window's wall time
    (100 = one core busy); RSS is sampled every `interval` seconds (max and last).
    """

    def __init__(self, pid: int, interval: float = 0.5):
        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._rss: list[int] = []
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _cpu(self) -> float:
        times = self._proc.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._rss.append(self._proc.memory_info().rss)

    def measure(self, seconds: float) -> dict:
        cpu0, t0 = self._cpu(), time.monotonic()
        self._rss.append(self._proc.memory_info().rss)
        self._thread.start()
        time.sleep(seconds)
        self._stop.set()
        self._thread.join()
        cpu1, t1 = self._cpu(), time.monotonic()
        self._rss.append(self._proc.memory_info().rss)
        return {
            "seconds": round(t1 - t0, 1),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "rss_mb_max": round(max(self._rss) / 1e6, 1),
            "rss_mb_last": round(self._rss[-1] / 1e6, 1),
        }
