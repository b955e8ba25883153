"""Where the primary's CPU goes per run in dispatch.py's throughput cases: a py-spy profile
of the real primary process, and the SQLite statements it runs. Prints one JSON object.

    .venv/bin/pip install py-spy   # into the venv only; not a dependency of cifleet
    .venv/bin/python bench/profile_dispatch.py [--runs 300] [--slots 4] [--out DIR]

Two passes of the same case: one under `py-spy record` (raw stacks of the threads on a
CPU, 100 samples/s; the flame graph's input goes to DIR), one under bench/counted_primary.py
(statements per run, by kind and the most frequent shapes). Each sample is put in the first
bucket of BUCKETS whose frames it holds (innermost first), so the shares add up to 100 %.
"""

import argparse
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from common import Primary, bench_dir
from dispatch import bench_throughput

PY_SPY = Path(sys.executable).parent / "py-spy"
COUNTED_PRIMARY = Path(__file__).resolve().parent / "counted_primary.py"
# Where SqliteStore.transaction waits for the write lock (its `with ... self._write_lock`).
WRITE_LOCK_LINE = "primary/store/sqlite.py:102"

# (bucket, what a frame's "function (file:line)" text holds), tried from the innermost
# frame outwards: a sample's bucket is the first match, so a statement run by plan() counts
# as the store, plan()'s own Python as planning. BEGIN / COMMIT and the wait for the write
# lock are the frames of SqliteStore.transaction itself (_bucket).
BUCKETS = [
    ("store: SQLite statements", ("primary/store/sqlite.py", "primary/store/db.py")),
    ("JSON", ("json/encoder.py", "json/decoder.py", "json/__init__.py")),
    ("logging", ("logging/__init__.py",)),
    ("planning: plan()", ("primary/runs/scheduler.py", "primary/runs/placement.py")),
    ("services: runs, workers, pipelines", ("primary/runs/", "primary/fleet/", "primary/pipe")),
    ("metrics", ("primary/metrics/", "prometheus_client/")),
    ("API views, auth, rate limits", ("primary/api/",)),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
    ("WSGI bridge (primary/server/wsgi.py)", ("primary/server/wsgi.py",)),
    ("TLS (ssl)", ("ssl.py", "asyncio/sslproto.py")),
    ("server: connections, bounds, deferral", ("primary/server/",)),
    ("asyncio loop, sockets, selectors", ("asyncio/", "selectors.py")),
    ("threads, queues", ("threading.py", "concurrent/futures/", "queue.py")),
]


def _bucket(frames: list[str]) -> str:
    for frame in reversed(frames):  # innermost first
        if "primary/store/sqlite.py" in frame and frame.startswith("transaction "):
            return "store: BEGIN / COMMIT, write lock"
        for name, marks in BUCKETS:
            if any(mark in frame for mark in marks):
                return name
    return "other"


def _short(frame: str) -> str:
    """`function (.../site-packages/pkg/file.py:12)` -> `function (pkg/file.py)`."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for cut in ("site-packages/", "python3.11/", "/bench13/"):
        if cut in where:
            where = where.split(cut, 1)[1]
    return f"{name} ({where})"


# Leaf frames of a thread that waits rather than runs: py-spy's idle detection misses them
# on this machine (a pool thread in queue.get, a held poll's Condition.wait, the loop in
# epoll). They are counted apart, not as CPU; with --gil they do not occur.
WAITS = {
    "idle": (
        "_worker (concurrent/futures/thread.py:81)",
        "Condition.wait (threading.py",
        "EpollSelector.select (selectors.py",
        "Thread.join (threading.py",
    ),
    "the store's write lock": (f"SqliteStore.transaction ({WRITE_LOCK_LINE})",),
}


def _wait(leaf: str) -> str | None:
    for name, marks in WAITS.items():
        if any(leaf.startswith(mark) or mark in leaf for mark in marks):
            return name
    return None


def _thread_kind(frames: list[str]) -> str:
    """The event loop's thread, a pool thread (the WSGI apps, the services), or another."""
    if any(f.startswith("Servers._run (") for f in frames):
        return "event loop (servers)"
    if any(f.startswith("_worker (") and "concurrent/futures/thread.py" in f for f in frames):
        return "pool threads (apps)"
    return "other threads"


def summarise(raw: Path) -> dict:
    """Buckets, the hottest leaf functions and the widest inclusive functions of a py-spy
    raw (collapsed) profile, over the samples that were not waits."""
    buckets: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    waits: collections.Counter = collections.Counter()
    by_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if " (" in f]  # not the process, thread frames
        if not frames:
            continue
        n = int(count)
        if (wait := _wait(frames[-1])) is not None:
            waits[wait] += n
            continue
        total += n
        bucket = _bucket(frames)
        buckets[bucket] += n
        by_thread[_thread_kind(frames)][bucket] += n
        leaves[_short(frames[-1])] += n
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += n

    def share(counter: collections.Counter, top: int) -> dict:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

    return {
        "samples_running": total,
        "samples_waiting": dict(waits),
        "buckets_percent": share(buckets, len(BUCKETS) + 1),
        "buckets_percent_by_thread": {
            kind: {k: round(100 * v / sum(c.values()), 1) for k, v in c.most_common()}
            for kind, c in sorted(by_thread.items())
        },
        "leaf_functions_percent": share(leaves, 25),
        "inclusive_functions_percent": share(inclusive, 40),
    }


def _thread_cpu(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> the Python thread's name without its number (py-spy dump)."""
    dump = subprocess.run(
        [PY_SPY, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    ).stdout
    names = {}
    for tid, name in re.findall(r'^Thread (\w+) \([^)]*\): "([^"]*)"', dump, re.M):
        names[int(tid, 0)] = re.sub(r"[_-]?\d+$", "", name)
    return names


@contextlib.contextmanager
def recorders(out_dir: Path, case: str, rate: int, options: list[str], perf: bool):
    """`during` for bench_throughput: py-spy (and perf) record the primary until the
    window ends; its threads' CPU in the window is kept by thread name."""
    found: dict = {}

    @contextlib.contextmanager
    def recording(primary: Primary):
        pid = str(primary.proc.pid)
        spy = subprocess.Popen(
            [PY_SPY, "record", "--pid", pid, "--rate", str(rate), "--format", "raw"]
            + ["--output", str(out_dir / f"py-spy-{case}.txt"), *options],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        perf_proc = None
        if perf:
            perf_proc = subprocess.Popen(
                ["perf", "record", "-F", "499", "-p", pid]
                + ["-o", str(out_dir / f"perf-{case}.data")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        time.sleep(1)  # the recorders attach before the window opens (not a measurement)
        before = _thread_cpu(primary.proc.pid)
        try:
            yield
        finally:
            after = _thread_cpu(primary.proc.pid)
            for proc in (spy, perf_proc):
                if proc is not None:
                    proc.send_signal(signal.SIGINT)  # each writes its output and exits
                    proc.communicate(timeout=120)
            names = _thread_names(primary.proc.pid)  # once py-spy record has let go of it
            by_name: collections.Counter = collections.Counter()
            for tid, cpu in after.items():
                by_name[names.get(tid, "?")] += cpu - before.get(tid, 0.0)
            found["thread_cpu_seconds"] = {k: round(v, 2) for k, v in by_name.most_common()}

    yield recording, found


def perf_shares(data: Path) -> dict:
    """perf's samples by shared object and the hottest native symbols, in %."""
    shares = {}
    for key, top in (("dso", 12), ("sym", 25)):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--sort", key]
            + ["--percent-limit", "0.5"],
            capture_output=True,
            text=True,
            timeout=300,
        ).stdout
        rows = re.findall(r"^\s+([\d.]+)%\s+(.+?)\s*$", report, re.M)
        shares[key] = {name: float(pct) for pct, name in rows[:top]}
    return shares


def count_statements(root: Path, runs: int, agents: int, slots: int) -> dict:
    counts_file = root / "statements.json"

    def prepare(primary: Primary) -> None:
        primary.command = [sys.executable, str(COUNTED_PRIMARY)]
        primary.env = {"CIFLEET_BENCH_STATEMENTS": str(counts_file)}

    result = bench_throughput(root / "count", runs, agents, slots, prepare=prepare)
    counts = json.loads(counts_file.read_text())
    shapes, requests = counts["statements"], counts["requests"]
    kinds: collections.Counter = collections.Counter()
    for shape, n in shapes.items():
        kinds[shape.split(" ", 1)[0].upper()] += n
    total = sum(shapes.values())
    return {
        "throughput": result,
        "statements_per_run": round(total / runs, 1),
        "by_kind_per_run": {k: round(v / runs, 1) for k, v in kinds.most_common()},
        "top_shapes_per_run": {s[:160]: round(n / runs, 2) for s, n in list(shapes.items())[:25]},
        "requests_per_run": {
            r: round(n / runs, 2) for r, n in sorted(requests.items(), key=lambda i: -i[1])
        },
        "note": "the whole life of the primary (start-up, registration, the bench's polling)",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, help="keep the recorders' output here")
    parser.add_argument("--skip-count", action="store_true", help="the profile only")
    parser.add_argument("--perf", action="store_true", help="perf record too (native code)")
    parser.add_argument(
        "--py-spy-option", action="append", default=[], help="passed on (--gil, --native)"
    )
    args = parser.parse_args()
    case = f"{args.agents}x{args.slots}"
    with bench_dir() as tmp:
        root = Path(tmp)
        out_dir = args.out or root
        out_dir.mkdir(parents=True, exist_ok=True)
        (root / "profile").mkdir()
        result = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
        with recorders(out_dir, case, args.rate, args.py_spy_option, args.perf) as (
            during,
            found,
        ):
            result["throughput"] = bench_throughput(
                root / "profile", args.runs, args.agents, args.slots, during=during
            )
        result.update(found)
        result["py_spy"] = summarise(out_dir / f"py-spy-{case}.txt")
        if args.perf:
            result["perf_percent"] = perf_shares(out_dir / f"perf-{case}.data")
        if not args.skip_count:
            (root / "count").mkdir()
            result["statements"] = count_statements(root, args.runs, args.agents, args.slots)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
