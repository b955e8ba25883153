"""Running the checkout's commands: each as the agent or as the job's identity, alone or
piped into the next, with one deadline, cancellable, and what they say scrubbed of the
credentials before anyone sees it.

Which user runs what is the caller's choice (agent.git_checkout): git on the agent's own
clone runs as the agent, anything that writes into the workspace runs as the job.
"""

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.calls import Cancelled
from agent.git_auth import scrub
from agent.identity import JobIdentity
from agent.workspace import PrepareFailed

GIT_TIMEOUT_SECONDS = 1800.0  # one command (or pipe); a large first clone takes its time
POLL_SECONDS = 0.05


@dataclass
class Step:
    """One process: argv, its folder and environment; `job` runs it as that identity
    (umask 022, no supplementary groups but its own), None as the agent."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    job: JobIdentity | None = None
    label: str = field(default="")

    def popen_kwargs(self) -> dict:
        if self.job is None:
            return {}
        return {**self.job.popen_kwargs(), "umask": 0o022}


class Commands:
    def __init__(self, cancel: threading.Event, secrets: list[str]) -> None:
        self.cancel = cancel
        self.secrets = secrets

    def run(self, *steps: Step, stdin: bytes | None = None) -> bytes:
        """Run `steps` piped one into the next (`stdin` into the first); the last one's
        output. PrepareFailed naming the first step that failed, with its last words."""
        code, out, failed = self.attempt(*steps, stdin=stdin)
        if failed is not None:
            step, said = failed
            what = step.label or step.argv[0] + (f" {step.argv[1]}" if len(step.argv) > 1 else "")
            lines = [line for line in said.splitlines() if line.strip()][-3:]
            raise PrepareFailed(f"{what} failed: {' / '.join(lines)[:1000]}")
        return out

    def attempt(
        self, *steps: Step, stdin: bytes | None = None
    ) -> tuple[int, bytes, tuple[Step, str] | None]:
        """Like run, without raising for an exit status: (status of the first step that
        failed or 0, last output, (that step, what it said) or None)."""
        if self.cancel.is_set():
            raise Cancelled()
        procs: list[subprocess.Popen] = []
        errors: list = []
        writer = None
        try:
            previous = None
            for step in steps:
                err = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
                errors.append(err)
                if previous is not None:
                    source = previous.stdout
                elif stdin is not None:
                    source = subprocess.PIPE
                else:
                    source = subprocess.DEVNULL
                try:
                    proc = subprocess.Popen(
                        step.argv,
                        cwd=step.cwd,
                        env=step.env,
                        stdin=source,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        start_new_session=True,
                        **step.popen_kwargs(),
                    )
                except OSError as e:
                    raise PrepareFailed(
                        f"git: cannot run {step.argv[0]} on this worker: {e.strerror}"
                    ) from None
                if previous is not None:
                    previous.stdout.close()  # the next one holds it; SIGPIPE reaches us
                elif stdin is not None:
                    # Fed by a thread of its own, so no pipe fills up while we wait.
                    pipe, proc.stdin = proc.stdin, None
                    writer = threading.Thread(
                        target=_feed, args=(pipe, stdin), name="git-stdin", daemon=True
                    )
                    writer.start()
                procs.append(proc)
                previous = proc
            out = self._wait(procs)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    _kill(proc)
            if writer is not None:
                writer.join()
        for step, proc, err in zip(steps, procs, errors, strict=True):
            if proc.returncode != 0:
                err.seek(0)
                said = err.read(1 << 16).decode(errors="replace").strip()
                said = scrub(said or f"exit status {proc.returncode}", self.secrets)
                for other in errors:
                    other.close()
                return proc.returncode, out, (step, said)
        for err in errors:
            err.close()
        return 0, out, None

    def _wait(self, procs: list[subprocess.Popen]) -> bytes:
        deadline = time.monotonic() + GIT_TIMEOUT_SECONDS
        last = procs[-1]
        while True:
            try:
                out, _ = last.communicate(timeout=POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                pass
            self._check(procs, deadline)
        for proc in procs[:-1]:
            while True:
                try:
                    proc.wait(timeout=POLL_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    self._check(procs, deadline)
        return out

    def _check(self, procs: list[subprocess.Popen], deadline: float) -> None:
        if self.cancel.is_set() or time.monotonic() > deadline:
            for proc in procs:
                _kill(proc)
            if self.cancel.is_set():
                raise Cancelled()
            raise PrepareFailed(f"git: still running after {GIT_TIMEOUT_SECONDS:.0f} s")


def _feed(pipe, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        pipe.close()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate()
