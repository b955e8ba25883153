"""Killing a job's processes: each step runs in its own process group, killed as a whole.

A process that left its group (setsid) is still caught if it was a descendant of a step
that was alive at kill time: psutil walks the tree before the first signal. When the job
runs as a uid of its own (agent.identity), every process of that uid is the job's, so the
end of a job also ends whatever of that uid is left, wherever it went.
"""

import contextlib
import os
import shutil
import signal
import subprocess
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


def kill_groups(
    pgids: Iterable[int], grace: float, leaders: Iterable[int] = (), uid: int | None = None
) -> None:
    """SIGTERM every group (and the leaders' descendants, and the processes of `uid`, a
    job's own uid), SIGKILL what is left after grace.

    Returns early once everything is gone.
    """
    pgids = list(pgids)
    strays = descendants(leaders)
    if uid is not None:
        for pid in processes_of_uid(uid):
            with contextlib.suppress(psutil.Error):
                strays.append(psutil.Process(pid))
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


def processes_of_uid(uid: int, thorough: bool = False) -> list[int]:
    """Pids of the live processes of `uid`, this one excepted.

    Quick: the owner of /proc/PID, which is the process's effective uid (a fraction of a
    millisecond for a few hundred processes). Thorough: the real, effective, saved and file
    system uids from /proc/PID/status, which also finds a process that made itself
    non-dumpable (its /proc entry then belongs to root) or runs a setuid program.
    """
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if not thorough:
                if entry.stat(follow_symlinks=False).st_uid == uid:
                    found.append(int(entry.name))
                continue
            with open(f"/proc/{entry.name}/status", "rb") as f:
                status = f.read()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith(b"Uid:"):
                if uid in {int(v) for v in line.split()[1:]}:
                    found.append(int(entry.name))
                break
    return found


def end_uid_processes(uid: int, grace: float) -> list[int]:
    """End every process of `uid` (a pipeline's own job uid, so all of them are that
    pipeline's jobs): SIGTERM, then after `grace` a SIGKILL sent as that uid to every process
    it may signal (kill -1), which no fork race and no hiding in /proc escapes. Returns the
    pids found at first."""
    pids = processes_of_uid(uid, thorough=True)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _pid_alive(p)]
        time.sleep(POLL_SECONDS)
    kill_every_process_of(uid)
    return pids


KILL_ROUNDS = 20


def kill_every_process_of(uid: int) -> bool:
    """SIGKILL every process of `uid`, sent as that uid to every process it may signal
    (kill -1), again until none is left: a process that forked while a round went by (or one
    that caught the SIGTERM of kill_groups and started a new session) is caught by the next.
    False if some survived every round (a process of the uid that is stuck in the kernel)."""
    for _ in range(KILL_ROUNDS):
        # The shell sending it is the one process kill -1 spares; it exits right after.
        subprocess.run(
            ["/bin/sh", "-c", "kill -KILL -1 2>/dev/null; true"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=30,
        )
        alive = [p for p in processes_of_uid(uid, thorough=True) if _pid_alive(p)]
        if not alive:
            return True
        time.sleep(POLL_SECONDS)
    return False


def _pid_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


SHARED_TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")


def remove_uid_temp_files(uid: int) -> list[str]:
    """Delete what `uid` left at the top of the shared temporary folders, so that the next
    pipeline given this uid finds nothing of the last one. Returns what was deleted."""
    removed = []
    for folder in SHARED_TEMP_DIRS:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)  # never follows links (fd-based on Linux)
                else:
                    os.unlink(entry.path)
            except OSError:
                continue
            removed.append(entry.path)
    return removed
