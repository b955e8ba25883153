"""Killing a job's processes: each step runs in its own process group, killed as a whole.

A process that left its group (setsid) is still caught if it was a descendant of a step
that was alive at kill time: psutil walks the tree before the first signal.
"""

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

POLL_SECONDS = 0.05


def group_alive(pgid: int) -> bool:
    """True while the group has a process that is not a zombie.

    Zombies count as gone: they are dead, and where PID 1 does not reap orphans (containers)
    they would otherwise keep a group "alive" for ever.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    for pid in psutil.pids():
        try:
            if os.getpgid(pid) == pgid and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except (OSError, psutil.Error):
            continue
    return False


def descendants(pids: Iterable[int]) -> list[psutil.Process]:
    """Every live descendant of the given processes (their own group or not)."""
    found: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.extend(psutil.Process(pid).children(recursive=True))
    return found


def kill_groups(pgids: Iterable[int], grace: float, leaders: Iterable[int] = ()) -> None:
    """SIGTERM every group (and the leaders' descendants), SIGKILL what is left after grace.

    Returns early once everything is gone.
    """
    pgids = list(pgids)
    strays = descendants(leaders)
    for pgid in pgids:
        _killpg(pgid, signal.SIGTERM)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        pgids = [p for p in pgids if group_alive(p)]
        strays = [p for p in strays if _proc_alive(p)]
        if not pgids and not strays:
            return
        time.sleep(POLL_SECONDS)
    for pgid in pgids:
        _killpg(pgid, signal.SIGKILL)
    for proc in strays:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _proc_alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_orphaned_jobs(workspaces: Path, grace: float) -> list[int]:
    """End the job processes an earlier agent process of this home left behind, and return
    their pids: every process whose CIFLEET_WORKSPACE is inside `workspaces`.

    An agent that was killed (kill -9, out of memory) stops nothing: its jobs run on, in
    their own sessions, unsupervised. Their attempts are over (the primary re-queues them),
    so left alone they would run beside the next attempt of the same run.
    """
    inside = str(workspaces) + os.sep
    me = os.getpid()
    found: list[psutil.Process] = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            workspace = proc.environ().get("CIFLEET_WORKSPACE", "")
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
        if workspace.startswith(inside):
            found.append(proc)
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [proc.pid for proc in found]
