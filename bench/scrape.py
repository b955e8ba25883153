"""What a Prometheus scrape of GET /metrics costs the primary, by fleet size.

    .venv/bin/python bench/scrape.py [--workers 10,100,1000] [--queued 1000] [--scrapes 50]

For each size, a data dir gets that many workers (all heard from just now), `--queued`
queued runs (waiting for a tag no worker has) and 50 pipelines, written straight into its
store; then:
- in this process, the registry's exposition (the store collector's reads included) is
  generated `--scrapes` times: its median time, the exposition's size and series count;
- a real primary (`cifleet-primary serve`) on that data dir is scraped over HTTPS with a
  metrics token `--scrapes` times, one keep-alive connection: median and p95 wall time of a
  scrape, and the primary's CPU time per scrape.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from common import BIN, cpu_seconds, init_primary, percentile
from prometheus_client import generate_latest

from agent import __version__
from primary.cli.client import AdminClient
from primary.config import PrimaryConfig
from primary.context import open_primary
from primary.metrics import metrics_of

PIPELINES = 50


def _fill(data_dir: Path, workers: int, queued: int) -> None:
    primary = open_primary(PrimaryConfig(data_dir=data_dir))
    now = time.time()
    spec = json.dumps({"name": "p0", "tags": ["nowhere"], "env": {}, "jobs": []})
    with primary.store.transaction() as conn:
        conn.executemany(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
            " created_at, last_contact) VALUES (?, ?, '[]', 2, ?, '00', ?, ?, ?)",
            [(f"w-{i}", f"bench-{i}", __version__, now + 86400, now, now) for i in range(workers)],
        )
        conn.executemany(
            "INSERT INTO pipelines (name, definition, spec, created_at, updated_at)"
            " VALUES (?, '', ?, ?, ?)",
            [(f"p{i}", spec, now, now) for i in range(PIPELINES)],
        )
        conn.executemany(
            "INSERT INTO runs (pipeline, spec, tags, state, reason, created_at, queued_at)"
            " VALUES (?, ?, '[\"nowhere\"]', 'queued', ?, ?, ?)",
            [
                (
                    f"p{i % PIPELINES}",
                    spec,
                    "waiting: no worker has any of the tags ['nowhere']",
                    now - i,
                    now - i,
                )
                for i in range(queued)
            ],
        )
    primary.store.close()


def _in_process(data_dir: Path, scrapes: int) -> dict:
    primary = open_primary(PrimaryConfig(data_dir=data_dir))
    registry = metrics_of(primary).registry
    times, body = [], b""
    for _ in range(scrapes):
        started = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - started)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    primary.store.close()
    return {
        "collect_ms_median": round(1000 * percentile(times, 0.5), 2),
        "exposition_kb": round(len(body) / 1024, 1),
        "series": series,
    }


def _over_https(root: Path, primary, scrapes: int) -> dict:
    token = subprocess.run(
        [str(BIN / "cifleet-primary"), "token", "create", "--name", "bench", "--role", "metrics"]
        + ["--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    client = AdminClient(primary.url, primary.ca_file, token)
    client.request("GET", "/metrics")  # the connection and its handshake
    cpu0 = cpu_seconds(primary.proc.pid)
    times = []
    for _ in range(scrapes):
        started = time.perf_counter()
        status, _, _ = client.request("GET", "/metrics")
        times.append(time.perf_counter() - started)
        assert status == 200
    cpu = cpu_seconds(primary.proc.pid) - cpu0
    client.close()
    return {
        "scrape_ms_median": round(1000 * percentile(times, 0.5), 2),
        "scrape_ms_p95": round(1000 * percentile(times, 0.95), 2),
        # Includes the primary's background work in the same seconds (the sweeper's pass
        # over the queue once a second), so it is an upper bound.
        "primary_cpu_ms_per_scrape": round(1000 * cpu / scrapes, 2),
    }


def bench_scrape(root: Path, sizes=(10, 100, 1000), queued: int = 1000, scrapes: int = 50):
    result = {}
    for workers in sizes:
        work = root / f"scrape-{workers}"
        work.mkdir()
        primary = init_primary(work, "--primary-worker-slots", "0")
        _fill(primary.data_dir, workers, queued)
        figures = {"queued_runs": queued, **_in_process(primary.data_dir, scrapes)}
        try:
            primary.start()
            figures.update(_over_https(work, primary, scrapes))
        finally:
            primary.close()
        result[f"{workers}_workers"] = figures
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", default="10,100,1000")
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    sizes = tuple(int(n) for n in args.workers.split(","))
    with tempfile.TemporaryDirectory(prefix="cifleet-bench-") as tmp:
        result = {"scrape": bench_scrape(Path(tmp), sizes, args.queued, args.scrapes)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
