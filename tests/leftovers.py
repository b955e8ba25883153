"""Processes a test run left behind: for the guard in tests/conftest.py.

Every process a run starts names the run's tmp dir somewhere: primaries (--data-dir),
agents (--home), their jobs (CIFLEET_WORKSPACE), sshd (its host key), ssh masters (their
control socket). Other runs on the same machine have other tmp dirs.
"""

import contextlib
import fcntl
import os
from pathlib import Path

import psutil

LOCK_NAME = ".lock"
SWEPT_NAME = ".swept"


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


def hold_lock(folder: Path) -> int:
    """Lock `folder` for as long as this process runs (the descriptor is never closed): a
    later run can tell that the run which made it has ended (`ended_runs`)."""
    fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def ended_runs(pattern: str) -> list[Path]:
    """The folders matching `pattern` that a run locked (`hold_lock`) and no longer holds."""
    ended = []
    for folder in Path("/").glob(pattern.lstrip("/")):
        try:
            fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CLOEXEC)
        except OSError:  # not locked by anyone: a run from before the locks, or not a run
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # that run goes on
        finally:
            os.close(fd)
        ended.append(folder)
    return ended


def kill_what_ended_runs_left(pattern: str) -> list[str]:
    """A run that was killed (CI's time limit, ^C twice) has no session end, so its
    primaries, agents and database servers would run on: kill them, once per folder."""
    lines = []
    for folder in ended_runs(pattern):
        swept = folder / SWEPT_NAME
        if swept.exists():
            continue
        lines += leftover_processes(folder, grace=0)
        with contextlib.suppress(OSError):
            swept.touch()
    return lines
