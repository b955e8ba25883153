"""Collect a job's artifacts into its spool, for the reporter to upload.

The files are read by a forked child that has become the job's own identity first (never
the agent's: a job may have planted links to the agent's key or to another pipeline's
workspace, and as the job's uid they lead nowhere the job could not go itself). It writes
the tar stream (agent/artifact_tar.py) into a pipe, and the agent copies at most
`max_bytes` of it into a file of its own. A fork, not an exec: a job's uid may not be
able to read the agent's interpreter or install at all. The child's credentials change, so
the kernel makes it undumpable: the job's other processes cannot read its memory. The
primary checks the tar again before it keeps it (primary/runs/artifacts.py).
"""

import contextlib
import os
import select
import signal
import threading
import time
from pathlib import Path

from agent import artifact_tar
from agent.identity import JobIdentity

# The primary's default limit too. The reporter sends the tar in one request body, read
# into memory, so this also bounds what an upload costs the agent.
MAX_ARTIFACT_BYTES = 64 << 20
COLLECT_TIMEOUT = 300.0
WAIT_SLICE = 0.2  # how soon a cancel stops the collection
PIPE_FD = 3  # the child's write end, once every other descriptor is closed
MAX_FD = os.sysconf("SC_OPEN_MAX")


class NoArtifacts(Exception):
    """Why a job's artifacts were not collected (its log gets the line)."""


def artifacts_path(spool_dir: Path, job: str) -> Path:
    return spool_dir / f"{job}.artifacts.tar"


def collect(
    workspace: Path,
    patterns: list[str],
    identity: JobIdentity,
    out: Path,
    cancel: threading.Event,
    max_bytes: int = MAX_ARTIFACT_BYTES,
) -> int:
    """Write the tar of the files `patterns` name to `out`; its size. NoArtifacts if the
    collector failed, took longer than COLLECT_TIMEOUT (a job's process may stop it: it runs
    as the job's uid), `cancel` was set, or the tar would pass `max_bytes` (then `out` is
    removed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only plain file work from here, then _exit
        _child(workspace, patterns, identity, write_end)
    os.close(write_end)
    size, failure = 0, None
    deadline = time.monotonic() + COLLECT_TIMEOUT
    waiting = select.poll()
    waiting.register(read_end, select.POLLIN)
    try:
        with open(out, "wb", opener=_private) as f:
            while True:
                left = deadline - time.monotonic()
                if cancel.is_set():
                    failure = "the run was cancelled"
                    break
                if left <= 0:
                    failure = f"collecting them took more than {COLLECT_TIMEOUT:g} s"
                    break
                if not waiting.poll(min(left, WAIT_SLICE) * 1000):
                    continue
                chunk = os.read(read_end, 1 << 16)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    failure = f"they come to more than {max_bytes} bytes"
                    break
                f.write(chunk)
    finally:
        os.close(read_end)
        if failure is not None:
            _kill(pid)
        _, status = os.waitpid(pid, 0)
    if failure is None and os.waitstatus_to_exitcode(status) != 0:
        failure = f"the collector failed (exit status {os.waitstatus_to_exitcode(status)})"
    if failure is not None:
        out.unlink(missing_ok=True)
        raise NoArtifacts(failure)
    return size


def _child(workspace: Path, patterns: list[str], identity: JobIdentity, fd: int) -> None:
    code = 1
    try:
        # Nothing of the agent's stays open here (its TLS connections, other jobs' log
        # pipes): a stopped child must not hold another job's pipe open.
        os.dup2(fd, PIPE_FD)
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(null, target)
        os.closerange(PIPE_FD + 1, MAX_FD)
        if identity.uid is not None:
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)
        with os.fdopen(PIPE_FD, "wb") as pipe:
            files = artifact_tar.matches(str(workspace), patterns)
            artifact_tar.write_tar(str(workspace), files, pipe)
        code = 0
    except BaseException:  # noqa: BLE001 - the parent only sees the exit status
        pass
    finally:
        os._exit(code)


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
