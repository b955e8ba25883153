"""Latency while an outsider tries to stall both ports (issue 12), beside the same figures
without the attack. Prints one JSON object.

    .venv/bin/python bench/stall_attack.py [--seconds 15] [--silent 200] [--idle 200]
        [--drips 40]

A primary with its default bounds, and four registered workers. Sampled for `--seconds`,
each in its own thread, one request at a time: an agent poll that does not wait on a
keep-alive connection (what a busy agent's polls are), the same on a new TLS connection each
time (what an agent reconnecting after an outage does), and an admin request (`GET
/api/v1/workers`, a new connection each time). Then the same under attack, from other
loopback addresses than the fleet's: `--silent` TCP sockets per port that send nothing,
`--idle` TLS connections to the public port that send no request, a worker's certificate
(copied) holding idle connections and dripping poll bodies on the agent port, and
`--drips` request bodies dripped at 5 B/s per port. Every closed attacker connection is
opened again at once. Target: p99 under 1 s under attack.

`--split-cores` stands in for an attacker on another host: the primary runs on CPU 0 alone,
the attack in a process of its own on CPU 1 at the lowest priority (nice 19), and the
samplers on CPU 1 at normal priority, so the attack takes what CPU 1 has left but never
the primary's core nor the samplers' turn. Without it, all of them share both cores.
"""

import argparse
import contextlib
import http.client
import importlib.util
import json
import multiprocessing
import os
import ssl
import threading
import time
from pathlib import Path

from common import BIN, bench_dir, init_primary, percentile, register_agent

from agent import __version__


def _attacker():
    path = Path(__file__).resolve().parent.parent / "tests" / "faults" / "attacker.py"
    spec = importlib.util.spec_from_file_location("attacker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


attacker = _attacker()
PRIMARY_CPU, OTHERS_CPU = 0, 1  # --split-cores
POLL = json.dumps({"wait": False, "runs": [], "version": __version__, "slots": 1}).encode()


def sample(seconds: float, request) -> list[float]:
    """Seconds per call of `request()`, one after another, for `seconds`; a failed call
    counts as the time it took."""
    took = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.monotonic()
        with contextlib.suppress(OSError):
            request()
        took.append(time.monotonic() - started)
    return took


def figures(took: list[float]) -> dict:
    return {
        "requests": len(took),
        "p50_ms": round(1000 * percentile(took, 0.5), 1),
        "p99_ms": round(1000 * percentile(took, 0.99), 1),
        "max_ms": round(1000 * max(took), 1),
    }


def measure(primary, contexts: list[ssl.SSLContext], seconds: float) -> dict:
    results: dict[str, list[float]] = {}
    admin = ssl.create_default_context(cafile=str(primary.ca_file))
    token = primary.token

    def kept_poll(context):
        conn = http.client.HTTPSConnection(
            "127.0.0.1", primary.agent_port, context=context, timeout=30
        )

        def call():
            conn.request("POST", "/agent/v1/poll", POLL, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise OSError(f"poll answered {response.status}")

        return call

    def new_poll(context):
        def call():
            conn = http.client.HTTPSConnection(
                "127.0.0.1", primary.agent_port, context=context, timeout=30
            )
            try:
                conn.request("POST", "/agent/v1/poll", POLL, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    raise OSError(f"poll answered {response.status}")
            finally:
                conn.close()

        return call

    def admin_call():
        conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=admin, timeout=30)
        try:
            conn.request("GET", "/api/v1/workers", headers={"Authorization": f"Bearer {token}"})
            conn.getresponse().read()
        finally:
            conn.close()

    jobs = {
        "agent_poll_keep_alive": [kept_poll(c) for c in contexts[:2]],
        "agent_poll_new_connection": [new_poll(c) for c in contexts[2:]],
        "admin_request_new_connection": [admin_call],
    }

    def run(name, call):
        took = sample(seconds, call)
        results.setdefault(name, []).extend(took)

    threads = [
        threading.Thread(target=run, args=(name, call))
        for name, calls in jobs.items()
        for call in calls
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {name: figures(took) for name, took in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--silent", type=int, default=200, help="silent sockets per port")
    parser.add_argument("--idle", type=int, default=200, help="idle TLS connections, public")
    parser.add_argument("--drips", type=int, default=40, help="dripped bodies per port")
    parser.add_argument(
        "--split-cores",
        action="store_true",
        help="the primary on a core of its own; the attack at nice 19 on the other",
    )
    args = parser.parse_args()
    if args.split_cores:
        os.sched_setaffinity(0, {OTHERS_CPU})  # this process, its samplers and the attack
    with bench_dir() as root:
        primary = init_primary(root, "--primary-worker-slots", "0")
        if args.split_cores:
            primary.command = ["taskset", "-c", str(PRIMARY_CPU), str(BIN / "cifleet-primary")]
        primary.start()
        try:
            contexts = []
            for i in range(5):
                assert register_agent(primary, root, f"w{i}").returncode == 0
                context = ssl.create_default_context(cafile=str(primary.ca_file))
                context.load_cert_chain(
                    str(root / f"w{i}" / "worker.crt"), str(root / f"w{i}" / "worker.key")
                )
                contexts.append(context)
            rogue = contexts.pop()  # the attacker's copy of a worker's certificate
            quiet = measure(primary, contexts, args.seconds)

            stop = multiprocessing.get_context("fork").Event()
            closed = multiprocessing.get_context("fork").Value("q", 0)
            attack = multiprocessing.get_context("fork").Process(
                target=run_attack,
                args=(primary, rogue, args, stop, closed, args.split_cores),
                daemon=True,
            )
            attack.start()
            time.sleep(3)  # the attack in full swing before sampling
            attacked = measure(primary, contexts, args.seconds)
            stop.set()
            attack.join(60)
            status, _, body = primary.client.request("GET", "/metrics")
            counters = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in body.decode().splitlines()
                if line.startswith(("cifleet_connections_refused_total", "cifleet_tls_handshake"))
                and not line.endswith(" 0.0")
            }
        finally:
            primary.close()
    print(
        json.dumps(
            {
                "stall_attack": {
                    "without_attack": quiet,
                    "under_attack": attacked,
                    "attack": {
                        "silent_sockets_per_port": args.silent,
                        "idle_tls_public": args.idle,
                        "idle_tls_agent_one_worker": 80,
                        "dripped_bodies_per_port": args.drips,
                        "attacker_connections_closed_by_primary": closed.value,
                        "split_cores": args.split_cores,
                    },
                    "refusals": counters,
                }
            },
            indent=2,
        )
    )


def run_attack(primary, rogue, args, stop, closed, lowest_priority: bool) -> None:
    """In a process of its own, until `stop`: the attack on both ports; how many of its
    connections the primary closed goes to `closed`."""
    if lowest_priority:
        os.nice(19)
    attack = attacker.Attacker()
    threads_stop = threading.Event()
    public = ssl.create_default_context(cafile=str(primary.ca_file))
    for port in (primary.api_port, primary.agent_port):
        attack.hold(args.silent, lambda port=port: attacker.tcp(port, "127.0.0.2"))
    attack.hold(args.idle, lambda: attacker.tls(primary.api_port, "127.0.0.3", public))
    attack.hold(80, lambda: attacker.tls(primary.agent_port, "127.0.0.3", rogue))
    for port, context, path in (
        (primary.api_port, public, "/api/v1/pipelines"),
        (primary.agent_port, rogue, "/agent/v1/poll"),
    ):
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
        for _ in range(args.drips):
            threading.Thread(
                target=_drip_again, args=(port, context, head.encode(), threads_stop), daemon=True
            ).start()
    stop.wait()
    threads_stop.set()
    attack.stop()
    closed.value = attack.closed_by_primary


def _drip_again(port, context, head, stop) -> None:
    while not stop.is_set():
        try:
            attacker.drip(port, "127.0.0.4", context, head, stop)
        except OSError:
            stop.wait(0.05)


if __name__ == "__main__":
    main()
