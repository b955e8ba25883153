"""How long add-worker.yml takes on real hosts (systemd containers, tests/containers.py)
with the role's defaults: N hosts from scratch with the controller's wheelhouse cache
empty, N new hosts again with it filled, and a run that changes nothing.

    sudo .venv/bin/python bench/add_workers.py [--hosts 10] [--trixie 1]

Needs root, systemd-nspawn and mmdebstrap (tests/run.sh installs them) and a package index
for the controller (the wheelhouse). `--trixie K`: K of the hosts run Debian 13
(Python 3.13), so two wheelhouses are built.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401 - loads tests/fleet.py as "fleet" first

TESTS = Path(__file__).resolve().parent.parent / "tests"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TESTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


containers = _load("containers")
playbook_fleet = _load("playbook_fleet")


def _add_hosts(lab, names: list[str], trixie: int) -> None:
    for i, name in enumerate(names):
        lab.add(name, "trixie" if i >= len(names) - trixie else "bookworm")
    lab.boot([lab.hosts[n] for n in names])


def _timed_add(fleet, what: str) -> dict:
    start = time.monotonic()
    result = fleet.playbook("add-worker.yml")
    seconds = time.monotonic() - start
    counts = playbook_fleet.recap(result.stdout)
    return {
        f"{what}_s": round(seconds, 1),
        f"{what}_changed_per_host": sorted({c["changed"] for c in counts.values()}),
    }


def bench_add_workers(root: Path, hosts: int = 10, trixie: int = 1) -> dict:
    reason = containers.skip_reason()
    if reason:
        return {"skipped": reason}
    lab = containers.HostLab(root / "hosts")
    fleet = None
    figures: dict = {
        "hosts": hosts,
        "python_3_13_hosts": trixie,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        lab.prepare(["bookworm", "trixie"] if trixie else ["bookworm"])
        first = [f"h{i}" for i in range(1, hosts + 1)]
        _add_hosts(lab, first, trixie)
        fleet = playbook_fleet.start_fleet(root, lab, {n: ["linux"] for n in first})
        figures.update(_timed_add(fleet, "from_scratch_cold_cache"))
        figures.update(_timed_add(fleet, "no_change"))
        # New hosts again, the wheelhouse cache now filled.
        for name in first:
            fleet.forget_connections(lab.hosts[name])
            lab.hosts.pop(name).destroy()
            fleet.primary.client.json("DELETE", f"/api/v1/workers/{name}")
        second = [f"g{i}" for i in range(1, hosts + 1)]
        _add_hosts(lab, second, trixie)
        fleet.tags = {n: ["linux"] for n in second}
        fleet.inventory_for(second, fleet.inventory)
        figures.update(_timed_add(fleet, "from_scratch_warm_cache"))
        active = [w for w in fleet.primary.workers() if w["state"] == "active"]
        figures["active_workers"] = len(active)
        figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if fleet is not None:
            fleet.close()
        left = lab.close()
        if fleet is not None:
            fleet.primary.close()
    if left:
        print("the container hosts left (removed now):", *left, sep="\n", file=sys.stderr)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--trixie", type=int, default=1, help="hosts on Debian 13 (Python 3.13)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cifleet-bench-playbooks-") as tmp:
        print(json.dumps(bench_add_workers(Path(tmp), args.hosts, args.trixie), indent=2))


if __name__ == "__main__":
    main()
