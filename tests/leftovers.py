"""Processes a test run left behind: for the guard in tests/conftest.py.

Every process a run starts names the run's tmp dir somewhere: primaries (--data-dir),
agents (--home), their jobs (CIFLEET_WORKSPACE), sshd (its host key), ssh masters (their
control socket). Other runs on the same machine have other tmp dirs.
"""

import contextlib
import os
from pathlib import Path

import psutil


def _names(info: dict, mark: str, root: str) -> bool:
    if mark in " ".join(info["cmdline"] or []):
        return True
    return any(mark in value or value == root for value in (info["environ"] or {}).values())


def leftover_processes(root: Path, grace: float = 5.0) -> list[str]:
    """Processes (not this one, nor its parents) that name `root` in their command line or
    environment. Each may take `grace` seconds to end, as one being stopped right now
    would; the rest are killed. One line per killed process."""
    mark, own = str(root) + os.sep, str(root)
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ", "status"]):
        info = proc.info
        if info["pid"] in mine or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if _names(info, mark, own):
            found.append(proc)
    _, alive = psutil.wait_procs(found, timeout=grace)
    lines, killed = [], []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            if proc.status() == psutil.STATUS_ZOMBIE:  # ended; its parent has not reaped it
                continue
            lines.append(f"pid {proc.pid}: {' '.join(proc.cmdline())}")
            proc.kill()
            killed.append(proc)
    psutil.wait_procs(killed, timeout=10)
    return lines
