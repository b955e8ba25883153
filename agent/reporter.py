"""Deliver one run to the primary: start, prepare notes, job statuses, log bytes, finish —
in order.

The executor appends events (it is a Sink) and never waits for the primary; this side
reads them in order and retries every call with backoff until the primary has it:

  prepare notes → running status → log bytes (shipped while the job runs) → final status
  (only once the whole spool file up to its final size is acknowledged) → ... → finish.

Log bytes are addressed by offset, so a resend never duplicates and a gap is never silent.
"""

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.assignment import Assignment
from agent.backoff import Backoff
from agent.calls import Cancelled, Refused, Stale, Stopped, UnknownWorker, call
from agent.client import Client, Response
from agent.executor import log_path
from agent.protocol import (
    CODE_LOG_GAP,
    CODE_LOG_INCOMPLETE,
    JOB_ARTIFACTS_PATH,
    JOB_LOG_PATH,
    JOB_STATUS_PATH,
    LOG_CHUNK_BYTES,
    MAX_PREPARE_LINES,
    RUN_FINISH_PATH,
    RUN_PREPARE_PATH,
    RUN_START_PATH,
)

# Delivery ends with these; agent.runner catches them from here.
__all__ = ["Fenced", "Refused", "RunReporter", "Stale", "Stopped", "UnknownWorker"]

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05  # how often a running job's spool file is checked for new bytes


class Fenced(Exception):
    """The agent lost contact with the primary and stopped this run (agent.fence)."""


class RunReporter:
    def __init__(
        self,
        client: Client,
        assignment: Assignment,
        spool_dir: Path,
        stop: threading.Event,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._client = client
        self._run = assignment
        # What the git source checked out ({commit, subject, author}), sent with the notes.
        self.commit: dict[str, str] | None = None
        self._spool_dir = spool_dir
        self._stop = stop
        self._new_backoff = backoff
        self._events: list[tuple[Any, ...]] = []
        self._cond = threading.Condition()
        self._acked: dict[str, int] = {}  # job → bytes the primary has acknowledged
        self._fenced = threading.Event()  # set by fence(): stop delivering, report nothing
        # Set from the delivery thread, read by the poll thread (plain booleans: one writer).
        # finishing: the run's jobs are over and its finish is being sent. The primary frees
        # the run's slot when it takes the finish, and may hand that slot a new run in a
        # poll answer that arrives before the finish answer does: from here on the run no
        # longer holds a slot on this side either.
        self.finishing = False
        # finished: the primary acknowledged the finish; polls stop listing the run.
        self.finished = False

    def job_running(self) -> bool:
        """Whether one of the run's jobs has started and not finished."""
        with self._cond:
            kinds = (e[0] for e in reversed(self._events) if e[0] in ("started", "finished"))
            return next(kinds, None) == "started"

    def backlog_bytes(self) -> int:
        """Bytes of the run's spooled output the primary has not acknowledged yet."""
        acked = dict(self._acked)  # one atomic copy; the delivery thread updates it
        backlog = 0
        for path in self._spool_dir.glob("*.log"):
            with contextlib.suppress(FileNotFoundError):
                backlog += max(path.stat().st_size - acked.get(path.stem, 0), 0)
        return backlog

    def send_spooled_logs(self) -> int:
        """Send what the spool holds of every job's log that the primary may not have (an
        earlier agent process's run, after a restart); the bytes the primary then holds.
        Raises what delivery raises (Refused, Stale, Fenced...) when the primary will not."""
        held = 0
        for path in sorted(self._spool_dir.glob("*.log")):
            job, size = path.stem, path.stat().st_size
            while self._ship_chunk(job, size):
                pass
            held += self._acked.get(job, 0)
        return held

    def fence(self) -> None:
        """Stop delivery where it is (Fenced is raised): the run is dropped, not reported."""
        self._fenced.set()
        self._client.abort()  # a request blackholed by a cut would hold delivery up

    # -- Sink: called from the executor's thread; never blocks on the network.

    def prepared(self, lines: list[str]) -> None:
        self._add(("prepared", list(lines)))

    def job_started(self, job: str) -> None:
        self._add(("started", job))

    def job_finished(
        self, job: str, state: str, exit_code: int | None, log_size: int | None
    ) -> None:
        self._add(("finished", job, state, exit_code, log_size))

    def artifacts(self, job: str, path: Path, size: int) -> None:
        self._add(("artifacts", job, path, size))

    def run_finished(self) -> None:
        self._add(("run_finished",))

    def fail(self, reason: str) -> None:
        """The executor broke down: delivery stops there (with Refused)."""
        self.abort(Refused(reason))

    def abort(self, error: Exception) -> None:
        """Delivery stops at this point by raising `error` (e.g. Stale seen by the executor)."""
        self._add(("abort", error))

    def _add(self, event: tuple[Any, ...]) -> None:
        with self._cond:
            self._events.append(event)
            self._cond.notify_all()

    # -- Delivery: called from the run's delivery thread.

    def start_run(self) -> bool:
        """Confirm the assignment. False if the primary took it back (409 stale_attempt)."""
        try:
            resp = self._call(
                RUN_START_PATH.format(run_id=self._run.run_id), {"attempt": self._run.attempt}
            )
        except Stale:
            return False
        if resp.status != 200:
            raise Refused(f"start: HTTP {resp.status}: {resp.message}")
        return True

    def deliver(self) -> None:
        """Deliver every event until the primary acknowledged finish.

        Raises Stale, UnknownWorker, Refused or Stopped when delivery cannot complete.
        """
        i = 0
        reported_start = None  # the job whose running status went with the prepare notes
        while True:
            event = self._event(i)
            kind = event[0]
            if kind == "prepared":
                # The executor's next event follows at once (the first job starts, or the
                # run ends); a first job's running status goes with the notes.
                following = self._event(i + 1)
                reported_start = following[1] if following[0] == "started" else None
                body = {"attempt": self._run.attempt, "lines": fit_lines(event[1])}
                if self.commit is not None:
                    body["commit"] = self.commit  # what the git source checked out
                if reported_start is not None:
                    body["job_started"] = reported_start
                resp = self._call(self._run_path(RUN_PREPARE_PATH), body)
                if resp.status != 200:
                    raise Refused(f"prepare: HTTP {resp.status}: {resp.message}")
            elif kind == "started":
                job = event[1]
                if job != reported_start:
                    self._status(job, {"state": "running"})
                # Ship output while the job runs, until its final event is queued; wait a
                # tick only when there was nothing to send.
                sent = True
                while self._event(i + 1, wait=0 if sent else TICK_SECONDS) is None:
                    sent = self._ship_chunk(job, limit=None)
            elif kind == "finished":
                _, job, state, exit_code, log_size = event
                status = {"state": state}
                if log_size is not None:
                    status.update(exit_code=exit_code, log_size=log_size)
                # As above, the next event follows at once: after the last job it is the
                # end of the run, and this final status goes with finish.
                if self._event(i + 1)[0] == "run_finished":
                    body = {"job": {"name": job, **status}}
                    self._final(
                        job, log_size, self._run_path(RUN_FINISH_PATH), body, "finish", finish=True
                    )
                    return
                path = self._job_path(JOB_STATUS_PATH, job)
                self._final(job, log_size, path, status, f"job {job} status")
            elif kind == "artifacts":
                self._upload_artifacts(event[1], event[2])
            elif kind == "abort":
                raise event[1]
            else:
                self._final(None, None, self._run_path(RUN_FINISH_PATH), {}, "finish", finish=True)
                return
            i += 1

    def _event(self, i: int, wait: float | None = None) -> tuple[Any, ...] | None:
        """Event number i; block for it (or up to `wait` seconds, then None)."""
        with self._cond:
            waited = 0.0
            while len(self._events) <= i:
                if self._stop.is_set():
                    raise Stopped()
                if self._fenced.is_set():
                    raise Fenced()
                if wait is not None and waited >= wait:
                    return None
                self._cond.wait(TICK_SECONDS)
                waited += TICK_SECONDS
            return self._events[i]

    def _final(
        self,
        job: str | None,
        log_size: int | None,
        path: str,
        body: dict,
        what: str,
        finish: bool = False,
    ) -> None:
        """POST `body` to `path` (a final job status, or the run's `finish`) once the primary
        has the first `log_size` bytes of `job`'s log; it answers 409 log_incomplete with
        its size when it has not, and the rest is sent from there."""
        while True:
            while job is not None and log_size is not None and self._acked.get(job, 0) < log_size:
                self._ship_chunk(job, limit=log_size)
            if finish:
                self.finishing = True
            resp = self._call(path, {"attempt": self._run.attempt, **body})
            if resp.status == 200:
                self.finished = finish
                return
            if job is not None and resp.status == 409 and resp.code == CODE_LOG_INCOMPLETE:
                self._acked[job] = _size(resp)
                continue
            raise Refused(f"{what}: HTTP {resp.status}: {resp.message}")

    def _upload_artifacts(self, job: str, path: Path) -> None:
        """Send the job's artifacts (a tar the collector wrote, at most MAX_ARTIFACT_BYTES)
        before its final status; a refusal (too large, a bad member) is logged here and the
        run goes on: its log already says what was collected."""
        data = path.read_bytes()
        url = f"{self._job_path(JOB_ARTIFACTS_PATH, job)}?attempt={self._run.attempt}"
        resp = self._call(url, data, "application/x-tar")
        if resp.status != 200:
            log.warning(
                "run %s job %s: the primary refused its artifacts: HTTP %s: %s",
                self._run.run_id,
                job,
                resp.status,
                resp.message,
            )
        path.unlink(missing_ok=True)

    def _status(self, job: str, body: dict[str, Any]) -> None:
        resp = self._call(
            self._job_path(JOB_STATUS_PATH, job), {"attempt": self._run.attempt, **body}
        )
        if resp.status != 200:
            raise Refused(f"job {job} status: HTTP {resp.status}: {resp.message}")

    def _ship_chunk(self, job: str, limit: int | None) -> bool:
        """Send the next chunk of the job's log (up to `limit`, or what the file has now).

        Returns whether there was anything to send.
        """
        path = log_path(self._spool_dir, job)
        offset = self._acked.get(job, 0)
        try:
            end = os.stat(path).st_size if limit is None else limit
            if end <= offset:
                return False
            with open(path, "rb") as f:
                data = os.pread(f.fileno(), min(LOG_CHUNK_BYTES, end - offset), offset)
        except FileNotFoundError:
            if limit is None:
                return False  # the executor has not created it yet
            raise Refused(f"spool file {path} is gone") from None
        if not data:
            raise Refused(f"spool file {path} is shorter than the job's log size")
        query = f"?attempt={self._run.attempt}&offset={offset}"
        resp = self._call(
            self._job_path(JOB_LOG_PATH, job) + query, data, content_type="application/octet-stream"
        )
        if resp.status == 200 or (resp.status == 416 and resp.code == CODE_LOG_GAP):
            size = _size(resp)
            if resp.status == 200 and size <= offset:
                # The primary took nothing; do not spin on it.
                log.warning(
                    "run %s job %s: the primary did not advance the log at %d",
                    self._run.run_id,
                    job,
                    offset,
                )
                self._stop.wait(1.0)
            self._acked[job] = size
            return True
        raise Refused(f"job {job} log: HTTP {resp.status}: {resp.message}")

    def _job_path(self, template: str, job: str) -> str:
        return template.format(run_id=self._run.run_id, job=job)

    def _run_path(self, template: str) -> str:
        return template.format(run_id=self._run.run_id)

    def _call(
        self, path: str, payload: dict[str, Any] | bytes, content_type: str = "application/json"
    ) -> Response:
        """POST until the primary answers; retry transport errors and 5xx with backoff."""
        if self._fenced.is_set():
            raise Fenced()
        try:
            return call(
                self._client,
                "POST",
                path,
                payload,
                stop=self._stop,
                label=f"run {self._run.run_id}",
                content_type=content_type,
                cancel=self._fenced,
                backoff=self._new_backoff,
            )
        except Cancelled:
            raise Fenced() from None


def fit_lines(lines: list[str], limit: int = MAX_PREPARE_LINES) -> list[str]:
    """At most `limit` prepare lines; the last one stays, as it says why a run failed."""
    if len(lines) <= limit:
        return lines
    left_out = len(lines) - (limit - 1)
    return [*lines[: limit - 2], f"... and {left_out} more lines", lines[-1]]


def _size(resp: Response) -> int:
    size = resp.json().get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Refused(f"the primary's answer has no valid size: {resp.body[:200]!r}")
    return size
