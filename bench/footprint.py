"""The footprint of one idle agent: RSS and CPU of `cifleet-agent run` once it is connected.

    .venv/bin/python bench/footprint.py [--window 30]

One primary, one registered agent process (started as an operator would); once the primary
lists it as active, its CPU (% of one core) and RSS are sampled over `--window` seconds, in
which it does nothing but long-poll. USS (memory no other process shares) is shown too.
"""

import argparse
import json
from pathlib import Path

import psutil
from common import Sampler, bench_dir, init_primary, start_agents, stop_all


def bench_footprint(root: Path, window: float = 30) -> dict:
    work = root / "footprint"
    work.mkdir()
    primary = init_primary(work, "--primary-worker-slots", "0")
    primary.start()
    agents = start_agents(primary, work, 1, 1)
    try:
        figures = Sampler(agents[0].proc.pid).measure(window)
        uss = psutil.Process(agents[0].proc.pid).memory_full_info().uss
        threads = psutil.Process(agents[0].proc.pid).num_threads()
    finally:
        stop_all(primary, agents)
    return {**figures, "uss_mb": round(uss / 1e6, 1), "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    with bench_dir() as tmp:
        result = {"agent_footprint": bench_footprint(Path(tmp), args.window)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
