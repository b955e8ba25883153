"""One assigned run on this worker: a delivery thread that confirms the run and reports
it, and an executor thread that prepares the workspace (fetching static files) and runs the
jobs once the primary confirmed the start."""

import logging
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from agent import git_checkout
from agent.assignment import Assignment
from agent.backoff import Backoff
from agent.calls import call
from agent.client import Client, ClientPool
from agent.executor import KILL_GRACE_SECONDS, RunExecutor
from agent.home import SPOOL_DIR
from agent.identity import IdentityError, JobIdentities, JobIdentity
from agent.protocol import RUN_FILE_PATH
from agent.reporter import Fenced, Refused, RunReporter, Stale, Stopped, UnknownWorker
from agent.workspace import PrepareFailed, prepare_workspace, workspace_dir

log = logging.getLogger(__name__)


def spool_dir_for(home: Path, run_id: int, attempt: int) -> Path:
    return home / SPOOL_DIR / f"{run_id}-{attempt}"


class RunHandle:
    def __init__(
        self,
        assignment: Assignment,
        home: Path,
        identities: JobIdentities,
        pool: ClientPool,
        stop: threading.Event,
        on_done: Callable[["RunHandle"], None],
        on_unknown_worker: Callable[[str, str], None],
        kill_grace: float = KILL_GRACE_SECONDS,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.assignment = assignment
        self.home = home
        self._identities = identities
        self.workspace = workspace_dir(identities.work_dir, assignment.pipeline)
        self.spool_dir = spool_dir_for(home, assignment.run_id, assignment.attempt)
        self._stop = stop
        # Each thread owns its connection while the run lasts: the delivery thread reports,
        # the executor thread fetches static files. Both are borrowed warm from the pool.
        self._pool = pool
        self._client = pool.acquire()
        self._files_client: Client | None = pool.acquire()  # None once back in the pool
        self._files_lock = threading.Lock()
        self._backoff = backoff
        self.reporter = RunReporter(self._client, assignment, self.spool_dir, stop, backoff)
        self.executor = RunExecutor(
            assignment,
            self.workspace,
            self.spool_dir,
            self.reporter,
            kill_grace,
            prepare=self._prepare,
            may_start=self._await_start,
        )
        # The executor prepares the workspace while the start is on its way (the round trip
        # is on the dispatch path), and starts the first job only once the primary
        # confirmed the start: set with `_start_confirmed` True, or False if it refused.
        self._start_answered = threading.Event()
        self._start_confirmed = False
        self._on_done = on_done
        # Monotonic send time of the last request that renewed this run's lease and
        # succeeded (its start, then polls that listed it); None until the start is
        # confirmed. The agent fences the run when it gets too old (agent.fence).
        self.contact: float | None = None
        self.fenced = False
        # How the run ended here (agent.metrics.RUN_OUTCOMES), set when delivery ends.
        self.outcome = "refused"
        self._on_unknown_worker = on_unknown_worker
        name = f"run-{assignment.run_id}.{assignment.attempt}"
        self._thread = threading.Thread(target=self._deliver, name=name, daemon=True)
        self._exec_thread = threading.Thread(target=self._execute, name=name + "-exec", daemon=True)

    @property
    def key(self) -> tuple[int, int]:
        return self.assignment.key

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Kill the running job; the run is still reported (jobs cancelled/skipped)."""
        self.executor.cancel()
        self._abort_fetch()  # a fetch in flight would otherwise hold the cancel up

    def note_contact(self, sent: float) -> None:
        """A poll sent at `sent` (monotonic) that listed this run succeeded."""
        if self.contact is not None:
            self.contact = max(self.contact, sent)

    def fence(self, grace: float) -> None:
        """Lost contact: kill the job within `grace` and drop the run without reporting it
        (the primary counts the attempt lost). Its spooled output stays on disk."""
        self.fenced = True
        self.reporter.fence()
        self.executor.cancel(grace)
        self._abort_fetch()

    def _abort_fetch(self) -> None:
        """Break a static-file fetch in flight, while the executor still holds its client:
        once back in the pool it may be another run's, and the primary repeats a cancel
        until the agent lets go of a run it has finished."""
        with self._files_lock:
            if self._files_client is not None:
                self._files_client.abort()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _prepare(self, lines: list[str]) -> JobIdentity:
        """Give the workspace to the identity the jobs run as, then fill it."""
        run = self.assignment
        try:
            identity = self._identities.for_run(run.pipeline, run.run_as_root)
        except (IdentityError, OSError) as e:
            raise PrepareFailed(f"job identity: {e}") from None
        owner = (identity.uid, identity.gid) if identity.uid is not None else None

        def checkout() -> None:
            keep = [f.path for f in run.files]  # static files are not the clone's to clean
            self.reporter.commit = git_checkout.checkout(
                self.home,
                self.workspace,
                run.source,
                run.secrets,
                identity,
                lines,
                self.executor.cancel_event,
                keep,
                fresh=run.clean_workspace,
            )

        prepare_workspace(
            self.home,
            self.workspace,
            run,
            self._fetch,
            lines,
            owner,
            checkout if run.source is not None else None,
        )
        return identity

    def _fetch(self, path: str) -> bytes:
        """A static file's bytes from the primary; transport errors and 5xx are retried."""
        run = self.assignment
        url = RUN_FILE_PATH.format(run_id=run.run_id, path=urllib.parse.quote(path, safe="/"))
        resp = call(
            self._files_client,
            "GET",
            f"{url}?attempt={run.attempt}",
            b"",
            stop=self._stop,
            label=f"run {run.run_id} static file {path}",
            cancel=self.executor.cancel_event,
            backoff=self._backoff,
        )
        if resp.status == 200:
            return resp.body
        if resp.status == 404:
            raise PrepareFailed(f"static files: {path}: the primary has no such file (HTTP 404)")
        raise PrepareFailed(f"static files: {path}: HTTP {resp.status}: {resp.message}")

    def _await_start(self) -> bool:
        while not self._start_answered.wait(0.05):
            if self._stop.is_set() or self.executor.cancelled:
                return False
        return self._start_confirmed

    def _execute(self) -> None:
        try:
            self.executor.run()
        except (Stale, UnknownWorker, Stopped) as e:
            # Seen while fetching static files: delivery ends the same way as if it had
            # seen this itself.
            self.reporter.abort(e)
        except Exception as e:
            log.exception("run %s: the executor failed", self.assignment.run_id)
            self.reporter.fail(f"the executor failed: {e}")
        finally:
            with self._files_lock:
                client, self._files_client = self._files_client, None
            self._pool.release(client)

    def _deliver(self) -> None:
        run = self.assignment
        keep_spool = False
        try:
            sent = time.monotonic()
            self._exec_thread.start()
            try:
                self._start_confirmed = self.reporter.start_run()
            finally:
                self._start_answered.set()
            if not self._start_confirmed:
                self.outcome = "taken_back"
                log.info(
                    "run %s attempt %s was taken back before it started", run.run_id, run.attempt
                )
                return
            self.contact = sent  # the start set the lease: H from no earlier than `sent`
            log.info("run %s attempt %s (%s): started", run.run_id, run.attempt, run.pipeline)
            self.reporter.deliver()
            self.outcome = "delivered"
            log.info("run %s attempt %s: delivered", run.run_id, run.attempt)
        except Stale:
            self.outcome = "taken_back"
            log.warning(
                "run %s attempt %s was taken back by the primary; dropping it",
                run.run_id,
                run.attempt,
            )
        except UnknownWorker as e:
            self._on_unknown_worker(e.code, e.message)
        except Refused as e:
            log.error("run %s attempt %s: dropping it: %s", run.run_id, run.attempt, e)
        except Stopped:
            # Stopping before delivery was done: leave the output on disk.
            self.outcome = "stopped"
            keep_spool = True
        except Fenced:
            self.outcome = "fenced"
            keep_spool = True
        except Exception:
            log.exception("run %s: delivery failed; dropping it", run.run_id)
        finally:
            self.executor.cancel()  # a no-op when the run already ended
            if self._exec_thread.is_alive():
                self._exec_thread.join()
            self._pool.release(self._client)
            if keep_spool:
                log.warning(
                    "run %s attempt %s: undelivered output left in %s",
                    run.run_id,
                    run.attempt,
                    self.spool_dir,
                )
            else:
                shutil.rmtree(self.spool_dir, ignore_errors=True)
            self._on_done(self)
