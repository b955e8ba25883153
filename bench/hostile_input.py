"""How fast the primary answers input meant to exhaust it: the YAML alias bomb of issue 11,
a self-referencing alias, deep nesting (YAML and JSON). Each is refused (400); the figure
is the time from sending to the refusal, and the primary's CPU for all of it.

    .venv/bin/python bench/hostile_input.py [--repeat 5]

Before the budget (issue 11) the bomb alone cost about 20 s of CPU and 2 GB of memory.
"""

import argparse
import http.client
import json
import time
from pathlib import Path

import psutil
from common import bench_dir, init_primary, percentile

BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(6)
)
CASES = {
    "yaml_alias_bomb_7x10": ("/api/v1/pipelines", BOMB.encode(), True),
    "yaml_self_alias": ("/api/v1/pipelines", b"a: &a [*a]\n", True),
    "yaml_5000_nested_lists": ("/api/v1/pipelines", b"[" * 5000 + b"]" * 5000, True),
    "yaml_1_mib_flat_list": ("/api/v1/pipelines", b"[" + b"a," * 524_000 + b"a]", True),
    "json_100000_brackets_register": ("/api/v1/workers/register", b"[" * 100_000, False),
}


def _post(primary, path: str, body: bytes, token: bool) -> tuple[int, float]:
    conn = http.client.HTTPSConnection(
        "127.0.0.1", primary.api_port, context=primary.client.context, timeout=120
    )
    headers = {"Content-Type": "application/yaml"}
    if token:
        headers["Authorization"] = f"Bearer {primary.token}"
    try:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def bench_hostile_input(root: Path, repeat: int = 5) -> dict:
    primary = init_primary(root, "--primary-worker-slots", "0")
    primary.start()
    try:
        proc = psutil.Process(primary.proc.pid)
        figures = {"bytes": {name: len(case[1]) for name, case in CASES.items()}}
        cpu0 = sum(proc.cpu_times()[:2])
        for name, (path, body, token) in CASES.items():
            times = []
            for _ in range(repeat):
                status, seconds = _post(primary, path, body, token)
                assert status == 400, (name, status)
                times.append(seconds)
            figures[name] = {
                "ms_median": round(1000 * percentile(times, 0.5), 1),
                "ms_max": round(1000 * max(times), 1),
            }
        figures["primary_cpu_seconds_all"] = round(sum(proc.cpu_times()[:2]) - cpu0, 2)
        figures["primary_rss_mb_after"] = round(proc.memory_info().rss / 1e6, 1)
    finally:
        primary.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with bench_dir() as tmp:
        print(json.dumps({"hostile_input": bench_hostile_input(tmp, args.repeat)}, indent=2))


if __name__ == "__main__":
    main()
