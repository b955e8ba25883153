"""Log streaming: one job prints numbered 100-byte lines; how fast does the primary store them?

    .venv/bin/python bench/logs.py [--megabytes 50] [--repeat 3] [--generator cat|awk]
        [--engine sqlite|postgresql]

The step records `date +%s%N` in a marks file as its first act, then prints the lines. The
clock stops when the store holds every byte: the job log file in the primary's data dir
(logs/RUN/ATTEMPT/JOB.log), or with --engine postgresql the job's chunks in the database (a
server of the benchmark's own, fsync on). The primary stores a chunk before it acknowledges
it, so from then on the agent may forget it. The stored bytes are then compared with the
expected output, and the job log read back over the admin API must be the same bytes.

Generators: `cat` of a file holding the expected lines, written before the clock starts (the
default: fast enough that the figure is about cifleet), or an `awk` loop that formats every
line (a job that really computes its output; on a 2-core machine it competes with the agent
and the primary for CPU). Each is timed alone too, writing to a file.
"""

import argparse
import hashlib
import json
import statistics
import subprocess
import time
from pathlib import Path

import psycopg
from common import (
    ENGINES,
    bench_dir,
    cpu_seconds,
    init_primary,
    shared_file,
    start_agents,
    stop_all,
    store_for,
    wait_for,
)

LINE_BYTES = 100


def write_expected(path: Path, lines: int) -> str:
    """Write the lines every run must store; return their sha256."""
    pad = b"x" * (LINE_BYTES - 12) + b"\n"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for start in range(0, lines, 10_000):
            block = b"".join(b"%010d " % i + pad for i in range(start, min(lines, start + 10_000)))
            digest.update(block)
            f.write(block)
    return digest.hexdigest()


def generator(kind: str, lines: int, expected: Path) -> str:
    """A shell command printing `lines` numbered lines of LINE_BYTES bytes each."""
    if kind == "cat":
        return f"cat {expected}"
    pad = "x" * (LINE_BYTES - 12)
    return f"awk 'BEGIN {{ for (i = 0; i < {lines}; i++) printf \"%010d {pad}\\n\", i }}'"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def time_alone(command: str, work: Path) -> float:
    """Seconds the generator alone takes to write its output to a file."""
    out = work / "generator-alone.out"
    started = time.monotonic()
    subprocess.run(f"{command} > {out}", shell=True, check=True)
    took = time.monotonic() - started
    out.unlink()
    return took


class StoredLog:
    """The job log as the primary stored it: its file, or its chunks in PostgreSQL."""

    def __init__(self, primary, run_id: int, store: str | None):
        self.file = primary.data_dir / "logs" / str(run_id) / "1" / "out.log"
        self.key = (run_id, 1, "out")
        self.db = psycopg.connect(store, autocommit=True) if store else None

    def size(self) -> int:
        if self.db is None:
            try:
                return self.file.stat().st_size
            except FileNotFoundError:
                return 0
        row = self.db.execute(
            "SELECT size FROM job_logs WHERE run_id = %s AND attempt = %s AND job = %s", self.key
        ).fetchone()
        return row[0] if row else 0

    def digest(self) -> str:
        if self.db is None:
            return file_digest(self.file)
        digest = hashlib.sha256()
        with self.db.cursor() as cur:
            cur.execute(
                "SELECT data FROM log_chunks WHERE run_id = %s AND attempt = %s AND job = %s"
                " ORDER BY start",
                self.key,
            )
            for (data,) in cur:
                digest.update(data)
        return digest.hexdigest()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


def one_run(primary, agent, marks: Path, total: int, expected: str, store: str | None) -> dict:
    cpu_before = (cpu_seconds(primary.proc.pid), cpu_seconds(agent.proc.pid))
    run_id = primary.trigger("logs")
    stored = StoredLog(primary, run_id, store)
    wait_for(lambda: stored.size() >= total, 600, "every log byte to be stored", interval=0.002)
    done_ns = time.time_ns()
    seconds = (done_ns - int(marks.read_text())) / 1e9
    cpu = (cpu_seconds(primary.proc.pid), cpu_seconds(agent.proc.pid))
    run = primary.wait_run(run_id, 120)
    return {
        "seconds": seconds,
        "cpu_primary": cpu[0] - cpu_before[0],
        "cpu_agent": cpu[1] - cpu_before[1],
        "run_state": run["state"],
        "byte_exact_in_store": stored.size() == total and stored.digest() == expected,
        "byte_exact_via_api": hashlib.sha256(primary.job_log(run_id, "out")).hexdigest()
        == expected,
    }


def bench_logs(
    root: Path, megabytes: int = 50, repeat: int = 3, kind: str = "cat", store: str | None = None
) -> dict:
    work = root / "logs"
    work.mkdir(exist_ok=True)
    lines = megabytes * 1_000_000 // LINE_BYTES
    total = lines * LINE_BYTES
    expected_file = work / "expected.out"
    expected = write_expected(expected_file, lines)
    command = generator(kind, lines, expected_file)
    generator_seconds = time_alone(command, work)
    primary = init_primary(work, "--primary-worker-slots", "0", store=store)
    primary.start()
    agents = start_agents(primary, work, 1, 1)
    marks = shared_file(work / "marks.txt")
    primary.pipeline(
        "name: logs\njobs:\n  - name: out\n    steps:\n"
        f"      - date +%s%N > {marks}\n"
        f"      - {json.dumps(command)}\n"
    )
    try:
        runs = [one_run(primary, agents[0], marks, total, expected, store) for _ in range(repeat)]
    finally:
        stop_all(primary, agents)
    seconds = statistics.median(r["seconds"] for r in runs)
    return {
        "bytes": total,
        "generator": kind,
        "runs": repeat,
        "seconds_median": round(seconds, 3),
        "mb_per_second": round(total / 1e6 / seconds, 1),
        "mb_per_second_each": [round(total / 1e6 / r["seconds"], 1) for r in runs],
        "all_succeeded": all(r["run_state"] == "success" for r in runs),
        "byte_exact_in_store": all(r["byte_exact_in_store"] for r in runs),
        "byte_exact_via_api": all(r["byte_exact_via_api"] for r in runs),
        "generator_alone_mb_per_second": round(total / 1e6 / generator_seconds, 1),
        # Trigger to every byte stored, median of the runs: where the time went.
        "cpu_seconds": {
            "primary": round(statistics.median(r["cpu_primary"] for r in runs), 2),
            "agent_and_job": round(statistics.median(r["cpu_agent"] for r in runs), 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--generator", choices=("cat", "awk"), default="cat")
    parser.add_argument("--engine", choices=ENGINES, default="sqlite", help="the store")
    args = parser.parse_args()
    with (
        bench_dir() as tmp,
        store_for(args.engine) as new_store,
    ):
        result = {
            "engine": args.engine,
            "logs": bench_logs(Path(tmp), args.megabytes, args.repeat, args.generator, new_store()),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
