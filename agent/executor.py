"""Run an assignment's jobs on this host: processes, spool files, timeouts, cancel.

The executor knows nothing about HTTP. It writes each job's output to a spool file and
tells a Sink what happened; delivering that to the primary is the reporter's job, so a
primary outage never stops or slows a job. Preparing the workspace (cleaning it, fetching
static files) is a callable handed in; it runs here, under the workspace lock, because it
changes the files the jobs of other runs of the same pipeline would see.
"""

import logging
import os
import pwd
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.artifacts import NoArtifacts, artifacts_path, collect
from agent.assignment import Assignment, Job
from agent.calls import Cancelled
from agent.identity import JobIdentity
from agent.masking import MaskingPipe
from agent.procs import kill_every_process_of, kill_groups
from agent.workspace import PrepareFailed

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 10.0
_WAIT_SLICE = 0.05  # how often a waiting step checks for cancel and timeout

# Two runs of the same pipeline on this host would share its workspace; they take turns.
_workspace_locks: dict[Path, threading.Lock] = {}
_workspace_locks_guard = threading.Lock()

# Makes the workspace ready, appends what it did to the list (the run's prepare notes) and
# returns who the jobs run as (None: the agent). Raises PrepareFailed to fail the run
# before its first job; anything else it raises (the attempt went stale, the agent stops)
# ends run() without reporting jobs.
Prepare = Callable[[list[str]], JobIdentity | None]


class Sink(Protocol):
    """Receives the executor's events, in execution order, from the executor's thread."""

    def prepared(self, lines: list[str]) -> None: ...

    def job_started(self, job: str) -> None: ...

    def job_finished(
        self, job: str, state: str, exit_code: int | None, log_size: int | None
    ) -> None: ...

    def artifacts(self, job: str, path: Path, size: int) -> None: ...

    def run_finished(self) -> None: ...


@dataclass(frozen=True)
class JobResult:
    state: str
    exit_code: int | None
    log_size: int


def log_path(spool_dir: Path, job: str) -> Path:
    return spool_dir / f"{job}.log"


def job_env(
    assignment: Assignment,
    job: Job,
    workspace: Path,
    base: Mapping[str, str] | None = None,
    identity: JobIdentity | None = None,
) -> dict[str, str]:
    """The job's environment. The agent's own environment is not passed through: it may
    hold things (credentials, service settings) that are none of the job's business."""
    base = os.environ if base is None else base
    identity = identity or JobIdentity()
    env = {
        "PATH": base.get("PATH", os.defpath),
        "HOME": identity.home or base.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir,
        **identity.env,
    }
    for name in ("LANG", "LC_ALL", "TMPDIR"):
        if name in base:
            env[name] = base[name]
    env.update(
        {
            "CI": "true",
            "CIFLEET": "true",
            "CIFLEET_RUN_ID": str(assignment.run_id),
            "CIFLEET_RUN_ATTEMPT": str(assignment.attempt),
            "CIFLEET_PIPELINE": assignment.pipeline,
            "CIFLEET_JOB": job.name,
            "CIFLEET_WORKSPACE": str(workspace),
        }
    )
    env.update(assignment.env)
    env.update(job.env)
    env.update({name: assignment.secrets[name] for name in job.secrets})
    return env


class RunExecutor:
    def __init__(
        self,
        assignment: Assignment,
        workspace: Path,
        spool_dir: Path,
        sink: Sink,
        kill_grace: float = KILL_GRACE_SECONDS,
        base_env: Mapping[str, str] | None = None,
        prepare: Prepare | None = None,
        may_start: Callable[[], bool] | None = None,
    ) -> None:
        """Without `prepare` the workspace is used as it is, jobs run as the agent and no
        prepare notes are sent. `may_start`, called after the workspace is prepared and
        before the first job, blocks until the run may start jobs (the primary confirmed
        it) and returns False when it may not: then no job runs."""
        self.assignment = assignment
        self.identity = JobIdentity()
        self.workspace = workspace
        self.spool_dir = spool_dir
        self._sink = sink
        self._kill_grace = kill_grace
        self._base_env = base_env
        self._prepare = prepare
        self._may_start = may_start
        self._cancel = threading.Event()

    def cancel(self, grace: float | None = None) -> None:
        """Kill the running job (reported cancelled) and skip the rest. Any thread may call.
        `grace`: a shorter SIGTERM grace for this kill (a fenced run must end in time)."""
        if grace is not None:
            self._kill_grace = min(self._kill_grace, grace)
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def cancel_event(self) -> threading.Event:
        """Set on cancel; lets work done for the executor (fetching files) stop early."""
        return self._cancel

    def run(self) -> dict[str, str]:
        """Run every job in order; return each job's final state."""
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        states: dict[str, str] = {}
        lock = _workspace_lock(self.workspace)
        acquired = False
        while not self._cancel.is_set() and not acquired:
            acquired = lock.acquire(timeout=_WAIT_SLICE)
        try:
            failure = self._prepare_workspace(acquired)
            if self._may_start is not None and not self._may_start():
                self._cancel.set()  # the primary took the run back: no job may run
            for i, job in enumerate(self.assignment.jobs):
                if failure is not None and i == 0:
                    # The first job carries the reason, so the user sees why nothing ran.
                    states[job.name] = self._fail_before_start(job, failure)
                    continue
                if (
                    failure is not None
                    or self._cancel.is_set()
                    or any(states.get(n) != "success" for n in job.needs)
                ):
                    states[job.name] = "skipped"
                    self._sink.job_finished(job.name, "skipped", None, None)
                    continue
                self._sink.job_started(job.name)
                result = self.run_job(job)
                states[job.name] = result.state
                log_size = self._collect_artifacts(job, result)
                self._sink.job_finished(job.name, result.state, result.exit_code, log_size)
        finally:
            if acquired:
                lock.release()
        self._sink.run_finished()
        return states

    def _prepare_workspace(self, acquired: bool) -> str | None:
        """Run the prepare hook and queue its notes; the failure line if the run must fail."""
        if self._prepare is None:
            return None
        lines: list[str] = []
        failure = None
        if not acquired:
            lines.append("cancelled before the workspace was prepared")
        else:
            try:
                self.identity = self._prepare(lines) or JobIdentity()
            except PrepareFailed as e:
                failure = str(e)
                lines.append(failure)
            except Cancelled:
                lines.append("cancelled while preparing the workspace")
        self._sink.prepared(lines)
        return failure

    def _fail_before_start(self, job: Job, reason: str) -> str:
        path = log_path(self.spool_dir, job.name)
        line = f"cifleet: the workspace could not be prepared, so no job ran: {reason}\n"
        with open(path, "ab") as f:
            f.write(line.encode())
        self._sink.job_started(job.name)
        self._sink.job_finished(job.name, "failed", None, os.stat(path).st_size)
        return "failed"

    def run_job(self, job: Job) -> JobResult:
        """Run one job's steps; its output goes to its spool file, byte for byte."""
        path = log_path(self.spool_dir, job.name)
        # O_APPEND: every process writes at the current end, so output interleaves exactly
        # as written even when stdout and stderr (and background children) share the file.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # With secrets, output passes through a masking pipe first (same order, *** for
        # each secret value); without, it goes straight to the file.
        masking = (
            MaskingPipe(fd, [v.encode() for v in self.assignment.secrets.values()])
            if self.assignment.secrets
            else None
        )
        out = masking.write_fd if masking else fd
        identity = self.identity
        env = job_env(self.assignment, job, self.workspace, self._base_env, identity)
        deadline = time.monotonic() + job.timeout if job.timeout else None
        pgids: list[int] = []
        state, exit_code = "success", 0
        try:
            for step in job.steps:
                try:
                    proc = subprocess.Popen(
                        ["/bin/sh", "-c", step],
                        cwd=self.workspace,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        start_new_session=True,
                        **identity.popen_kwargs(),
                    )
                except OSError as e:
                    log.error(
                        "run %s job %s: cannot start /bin/sh: %s",
                        self.assignment.run_id,
                        job.name,
                        e,
                    )
                    state, exit_code = "failed", None
                    break
                pgids.append(proc.pid)
                stopped_by = self._wait(proc, deadline)
                if stopped_by:
                    kill_groups(pgids, self._kill_grace, leaders=[proc.pid])
                    proc.wait()
                    state = stopped_by
                    # The signal that ended the shell, as a negative number, if one did.
                    exit_code = proc.returncode if proc.returncode < 0 else None
                    break
                if proc.returncode != 0:
                    state, exit_code = "failed", proc.returncode
                    break
        finally:
            # Background processes a step started live until the end of the job, no longer:
            # with a uid of its own, also those that left the job's process groups.
            kill_groups(pgids, self._kill_grace, uid=identity.uid if identity.dedicated else None)
            if identity.dedicated and not kill_every_process_of(identity.uid):
                log.error(
                    "run %s job %s: processes of uid %s outlived the job's end",
                    self.assignment.run_id,
                    job.name,
                    identity.uid,
                )
            if masking:
                masking.finish()
            os.close(fd)
        return JobResult(state, exit_code, os.stat(path).st_size)

    def _collect_artifacts(self, job: Job, result: JobResult) -> int:
        """After a job that ran to its end (success or failure, not killed), queue its
        artifacts for upload before its final state; a failure to collect them is said in
        its log. The job's log size, that line included."""
        if not job.artifacts or result.state not in ("success", "failed"):
            return result.log_size
        out = artifacts_path(self.spool_dir, job.name)
        try:
            size = collect(self.workspace, job.artifacts, self.identity, out, self._cancel)
        except NoArtifacts as e:
            path = log_path(self.spool_dir, job.name)
            with open(path, "ab") as f:
                f.write(f"cifleet: the job's artifacts were not uploaded: {e}\n".encode())
            return os.stat(path).st_size
        self._sink.artifacts(job.name, out, size)
        return result.log_size

    def _wait(self, proc: subprocess.Popen, deadline: float | None) -> str | None:
        """Wait for the step; return None when it exited, else why it must be killed."""
        while True:
            try:
                proc.wait(timeout=_WAIT_SLICE)
                return None
            except subprocess.TimeoutExpired:
                pass
            if self._cancel.is_set():
                return "cancelled"
            if deadline is not None and time.monotonic() >= deadline:
                return "timed_out"


def _workspace_lock(workspace: Path) -> threading.Lock:
    with _workspace_locks_guard:
        return _workspace_locks.setdefault(workspace.resolve(), threading.Lock())
