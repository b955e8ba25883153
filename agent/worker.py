"""The agent's main loop: long-poll the primary, start and cancel runs, drain and stop.

Model: rq's worker loop and Buildkite's signals. run() supervises; one poll thread talks to
the primary; each run has its own threads (agent.runner). Stopping is driven by flags and
one threading.Event, so the same loop works in the CLI (signals set the flags) and inside
the primary as its built-in worker (a thread with its own stop event, no signals).
"""

import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from agent import __version__, leftovers, renewal
from agent.assignment import parse_assignment
from agent.backoff import CAP_SECONDS, Backoff, poll_pause
from agent.calls import UnknownWorker
from agent.client import Client, ClientPool, TransportError, agent_context
from agent.executor import KILL_GRACE_SECONDS
from agent.fence import busy_poll_hold, fence_after, fence_due, fence_kill_grace
from agent.home import (
    FILES_DIR,
    SPOOL_DIR,
    ConfigError,
    load_config,
    lock_home,
    update_config,
    wipe_identity,
    work_dir,
)
from agent.identity import MODE_SHARED, IdentityError, JobIdentities
from agent.load import LOAD_CHECK_SECONDS, load_report, moved
from agent.metrics import Snapshot
from agent.primaries import Primaries
from agent.procs import end_orphaned_jobs, end_uid_processes
from agent.protocol import (
    CODE_CREDENTIALS_CONFLICT,
    CODE_STORAGE_FULL,
    CODE_STORAGE_UNAVAILABLE,
    CODE_UNKNOWN_WORKER,
    IDLE_POLL_CLIENT_TIMEOUT_SECONDS,
    IDLE_POLL_MAX_HOLD_SECONDS,
    MAX_EVICTED_WORKSPACES,
    MAX_SLOTS,
    MIN_SLOTS,
    POLL_CLIENT_TIMEOUT_SECONDS,
    POLL_HOLD_SECONDS,
    POLL_PATH,
    REFUSED_CODES,
)
from agent.runner import RunHandle
from agent.workspace import delete_workspaces, empty_trash, list_workspaces, mark_used
from agent.workspace_cap import evict

log = logging.getLogger(__name__)

SUPERVISE_SECONDS = 0.2  # how often run() looks at the stop flags
QUICK_ANSWER_SECONDS = 1.0  # an empty poll answer faster than this gets a pause after it
FORCE_DELIVERY_SECONDS = 30.0  # after a force stop, how long cancelled runs may take to deliver
MIN_RETRY_CAP_SECONDS = 1.0
UNKNOWN_WORKER_MESSAGE = (
    "the primary no longer knows this worker; it was removed or its certificate revoked"
)
CONFLICT_MESSAGE = (
    "the primary refuses every certificate of this worker: {detail} The key and certificate"
    " stay in {home} for the investigation. Find and stop the other agent using this"
    " worker's key; then an admin removes the worker (DELETE /api/v1/workers/ID or"
    " remove-worker.yml) and registers this host again"
)


class Agent:
    def __init__(
        self,
        home: Path,
        stop: threading.Event | None = None,
        *,
        kill_grace: float = KILL_GRACE_SECONDS,
        force_delivery: float = FORCE_DELIVERY_SECONDS,
        primaries: list[str] | None = None,
        workspace_max_bytes: int | None = None,
    ) -> None:
        """Load the registered home (ConfigError if it is not usable) and its TLS identity.
        `primaries`: more agent URLs of the fleet's primaries to move to when the current
        one cannot be reached (agent.primaries). `workspace_max_bytes`: the cap on the
        workspaces' disk use (agent.workspace_cap)."""
        # Absolute, so the CIFLEET_WORKSPACE of every job names this home wherever it runs.
        self.home = Path(home).absolute()
        self.config = load_config(self.home)
        self.stop = stop if stop is not None else threading.Event()
        self.slots: int = self.config["slots"]
        # Set when the primary refused this worker's certificate (403): unknown_worker
        # (removed: the identity is wiped) or credentials_conflict (a copied key: kept).
        self.refused: str | None = None
        self.work_dir = work_dir(self.home, self.config)
        try:
            self.identities = JobIdentities(self.home, self.work_dir, self.config)
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError(f"{self.home}/config.json: job_uids: {e}") from None
        # Names this agent process to the primary: a new one means the runs the previous
        # process held are gone (see run()).
        self.session = secrets.token_hex(8)
        # The longest pause between retries to the primary; see _adopt_heartbeat.
        self._retry_cap = CAP_SECONDS
        self._heartbeat: float | None = None  # the primary's heartbeat timeout, once heard
        # Runs this agent fenced (agent.fence) whose jobs are dead: each next poll tells the
        # primary they are lost, until one gets through.
        self._abandoned: set[tuple[int, int]] = set()
        try:
            self.primaries = Primaries(
                [self.config["agent_url"], *(primaries or [])], self.config.get("agent_urls")
            )
        except ValueError as e:
            raise ConfigError(f"{self.home}/config.json: agent_url: {e}") from None
        self._context = agent_context(self.home)
        self._kill_grace = kill_grace
        self._force_delivery = force_delivery
        self._runs: dict[tuple[int, int], RunHandle] = {}
        self._lock = threading.Lock()
        self.workspace_max_bytes = workspace_max_bytes
        self._evicting = threading.Lock()  # one eviction at a time (runs end in parallel)
        # Workspaces deleted for the cap that the primary has not been told of yet.
        self._evicted: set[str] = set()
        renewal.recover(self.home)
        # Clients read the context at each connect: a renewal swaps it for all of them.
        # Every client connects to the current primary: after a move, each request goes to
        # the new one, the runs' resends too (their log offsets make them byte-exact).
        self._poll_client = Client(self.primaries, lambda: self._context)
        self._pool = ClientPool(self.primaries, lambda: self._context)
        self._renew_at = renewal.next_renewal(self.home)
        self._poll_interrupted = False
        # The load the poll in flight reported, while it is an idle one the primary may hold
        # for minutes (None otherwise): _supervise ends it when the load moves (agent.load).
        self._held_load: dict[str, Any] | None = None
        # Plain attributes, not Events: signal handlers set them, and taking a lock inside
        # a signal handler can deadlock the main thread.
        self._drain_requested = False
        self._force_requested = False
        # For agent.metrics: counted here, read by snapshot().
        self._last_contact: float | None = None  # Unix time of the last poll answered
        self._fence_events = 0
        self._runs_ended: dict[str, int] = {}

    # -- Control: safe from signal handlers and from other threads.

    def request_drain(self) -> None:
        """Take no new work; finish and deliver the current runs; then run() returns."""
        self._drain_requested = True

    def request_force_stop(self) -> None:
        """Cancel the current runs (kill their jobs), deliver that, then run() returns."""
        self._force_requested = True

    @property
    def draining(self) -> bool:
        return self._drain_requested or self._force_requested

    def held_runs(self) -> list[tuple[int, int]]:
        """(run_id, attempt) of every run this agent holds: executing or still delivering.
        Fenced runs are not held any more, even while their jobs are being killed, nor
        runs whose finish the primary has acknowledged."""
        with self._lock:
            return sorted(
                key
                for key, handle in self._runs.items()
                if not handle.fenced and not handle.reporter.finished
            )

    def _slots_taken(self) -> int:
        """Runs that hold one of this agent's slots, counted as the primary counts them: a
        run stops holding its slot once its finish is on its way (the primary frees the
        slot when it takes the finish, and may offer it again before the answer is back).
        Call with self._lock held."""
        return sum(1 for handle in self._runs.values() if not handle.reporter.finishing)

    def snapshot(self) -> Snapshot:
        """This agent's figures now, for its metrics listener (agent.metrics)."""
        with self._lock:
            live = [h for h in self._runs.values() if not h.fenced and not h.reporter.finished]
            used = self._slots_taken()
            ended = dict(self._runs_ended)
        return Snapshot(
            worker=self.config["name"],
            version=__version__,
            slots=self.slots,
            slots_used=used,
            jobs_running=sum(h.reporter.job_running() for h in live),
            spool_backlog_bytes=sum(h.reporter.backlog_bytes() for h in live),
            last_contact=self._last_contact,
            draining=self.draining,
            fence_events=self._fence_events,
            runs_ended=ended,
        )

    # -- The loop.

    def run(self) -> None:
        """Work until stopped: by self.stop, by a finished drain or force stop, or by the
        primary forgetting this worker. Setting self.stop directly is the hard stop: jobs are
        killed and undelivered output stays in the spool."""
        log.info(
            "agent %s (%s) polling %s with %d slot(s)",
            self.config["name"],
            self.config["worker_id"],
            " or ".join(self.primaries.urls()),
            self.slots,
        )
        lock = lock_home(self.home)  # ConfigError when another agent runs with this home
        try:
            self._prepare_identities()
            self._end_leftovers()
            empty_trash(self.home, self.work_dir)
            poller = threading.Thread(target=self._poll_loop, name="poll", daemon=True)
            poller.start()
            try:
                self._supervise()
            finally:
                self.stop.set()
                self._shutdown(poller)
        finally:
            os.close(lock)
            if self.unknown_worker:
                # De-registered (or revoked): this identity is useless now and must not
                # linger on the host. Registering again needs the worker secret.
                wiped = wipe_identity(self.home)
                log.warning(
                    "the primary removed this worker; wiped %s",
                    ", ".join(str(p) for p in wiped) or "nothing (already gone)",
                )

    @property
    def unknown_worker(self) -> bool:
        """The primary removed this worker (or revoked its certificate)."""
        return self.refused == CODE_UNKNOWN_WORKER

    @property
    def in_conflict(self) -> bool:
        """The primary refuses this worker's certificates: a copy of its key was used."""
        return self.refused == CODE_CREDENTIALS_CONFLICT

    def _prepare_identities(self) -> None:
        """Who jobs run as (agent.identity), said once at start; ConfigError if jobs could
        not get the identity they need."""
        private = (self.home / SPOOL_DIR, self.home / FILES_DIR)
        for folder in private:  # spooled output and records: nobody else's business
            folder.mkdir(mode=0o700, exist_ok=True)
            os.chmod(folder, 0o700)
        try:
            self.identities.prepare()
        except (IdentityError, OSError) as e:
            raise ConfigError(str(e)) from None
        if self.identities.mode == MODE_SHARED:
            log.warning(self.identities.summary())
        else:
            log.info("%s; workspaces in %s", self.identities.summary(), self.work_dir)

    def _end_leftovers(self) -> None:
        """What an earlier agent process of this home left when it died: its jobs, still
        running, and output it could not deliver. Those attempts are over (the primary
        re-queues them when this process first polls), and nothing here can resume them; their
        undelivered output is sent first, while the primary still takes it."""
        ended = end_orphaned_jobs(self.work_dir, self._kill_grace)
        for uid in self.identities.leftover_uids():
            # Also what left the jobs' environment behind: every process of their uids.
            ended += [p for p in end_uid_processes(uid, self._kill_grace) if p not in ended]
        if ended:
            log.warning(
                "ended %d process(es) of jobs an earlier agent process left running: %s",
                len(ended),
                " ".join(map(str, ended)),
            )
        leftovers.deliver_and_remove(self.home, self._pool, self.stop)

    def _supervise(self) -> None:
        drain_seen = force_seen = False
        force_deadline = None
        load_checked = time.monotonic()
        while not self.stop.wait(SUPERVISE_SECONDS):
            self._fence_silent_runs()
            if time.monotonic() - load_checked >= LOAD_CHECK_SECONDS:
                load_checked = time.monotonic()
                self._report_moved_load()
            if self._force_requested and not force_seen:
                force_seen = drain_seen = True
                log.info("force stop: cancelling %d run(s)", len(self.held_runs()))
                with self._lock:
                    handles = list(self._runs.values())
                for handle in handles:
                    handle.cancel()
                force_deadline = time.monotonic() + self._kill_grace + self._force_delivery
                self._interrupt_poll()  # so the primary hears "draining" now
            if self._drain_requested and not drain_seen:
                drain_seen = True
                log.info("draining: finishing %d run(s), taking no new work", len(self.held_runs()))
                self._interrupt_poll()
            if self.draining and not self.held_runs():
                log.info("no runs left; stopping")
                return
            if force_deadline is not None and time.monotonic() > force_deadline:
                log.warning("force stop: gave up waiting for delivery")
                return

    def _report_moved_load(self) -> None:
        """End the held idle poll when the host's load has moved since it reported it, so
        the next one tells the primary (whose scheduler goes by it) now, not a hold later."""
        reported = self._held_load
        if reported is not None and moved(reported, load_report()):
            log.debug("the host's load moved since the held poll reported it: polling again")
            self._interrupt_poll()

    def _fence_silent_runs(self) -> None:
        """Stop the runs whose lease the primary may soon count as expired: it would then
        run them elsewhere while their jobs still ran here (see agent.fence)."""
        heartbeat, now = self._heartbeat, time.monotonic()
        with self._lock:
            due = [
                h
                for h in self._runs.values()
                if not h.fenced and not h.reporter.finished and fence_due(h.contact, now, heartbeat)
            ]
        if not due or heartbeat is None:
            return
        log.warning(
            "no contact with the primary for %.1f s: stopping runs %s so they cannot run twice"
            " (the primary re-queues them after %g s without contact)",
            now - max(h.contact or now for h in due),
            ", ".join(f"{h.key[0]} (attempt {h.key[1]})" for h in due),
            heartbeat,
        )
        grace = fence_kill_grace(heartbeat, self._kill_grace)
        self._fence_events += len(due)
        for handle in due:
            handle.fence(grace)

    def _shutdown(self, poller: threading.Thread) -> None:
        # shut, not abort: a poll the drain's interruption started again must not be held.
        self._poll_interrupted = True
        self._poll_client.shut()
        with self._lock:
            handles = list(self._runs.values())
        for handle in handles:
            handle.cancel()
        poller.join(timeout=5)
        for handle in handles:
            handle.join(timeout=self._kill_grace + 5)
        self._poll_client.close()
        self._pool.close()
        log.info("agent stopped")

    def _interrupt_poll(self) -> None:
        self._poll_interrupted = True
        self._poll_client.abort()

    def _poll_loop(self) -> None:
        try:
            self._poll_forever()
        except Exception:
            # Without polls the primary would mark this worker lost; better to say so and stop.
            log.exception("the poll loop failed; stopping")
            self.stop.set()

    def _poll_forever(self) -> None:
        backoff = Backoff()
        failing = False
        while not self.stop.is_set():
            if time.time() >= self._renew_at:
                self._renew_certificate()
            # An interrupt (draining, say) while the body is made would find no request to
            # break, and the poll would be held with the old body: refused instead.
            aborts = self._poll_client.abort_count
            body = self._poll_body()
            started = time.monotonic()  # the send time: the primary renews no earlier
            url = self.primaries.current()
            self._held_load = body["load"] if "max_hold" in body else None
            try:
                resp = self._poll_client.post_json(
                    POLL_PATH,
                    body,
                    timeout=poll_client_timeout(body),
                    unless_aborted_since=aborts,
                )
            except TransportError as e:
                if self._poll_interrupted:  # we broke it ourselves: poll again at once
                    self._poll_interrupted = False
                    continue
                # The client moved to another primary, if there is one: the backoff's
                # first pauses are short (under a second), so the move takes no longer.
                problem = f"cannot reach the primary at {url}: {e}"
            else:
                if resp.status == 403 and resp.code in REFUSED_CODES:
                    self._unknown_worker(resp.code, resp.message)
                    return
                if resp.status == 200:
                    if failing:
                        log.info("connected to the primary again")
                    failing = False
                    self._last_contact = time.time()
                    backoff.reset()
                    self._contact_made(body, started)
                    answer = resp.json()
                    took_work = self._handle_answer(answer)
                    if not took_work and time.monotonic() - started < self._quick_answer():
                        # Never busy-loop on a quick answer.
                        pause = poll_pause(answer.get("poll_after"), POLL_HOLD_SECONDS)
                        self.stop.wait(pause)
                    continue
                if resp.code in (CODE_STORAGE_FULL, CODE_STORAGE_UNAVAILABLE):
                    self._leases_kept(body, started)
                problem = f"poll refused: HTTP {resp.status}: {resp.message}"
            log.log(logging.DEBUG if failing else logging.WARNING, "%s; retrying", problem)
            failing = True
            backoff.cap = self._retry_cap
            self.stop.wait(backoff.next_delay())

    def _contact_made(self, body: dict[str, Any], sent: float) -> None:
        """A poll sent at `sent` succeeded: it renewed the leases of the runs it listed, and
        the primary now knows the abandoned runs it listed are lost."""
        self._leases_kept(body, sent)
        with self._lock:
            self._abandoned -= {(r["run_id"], r["attempt"]) for r in body["abandoned"]}
            self._evicted -= set(body["evicted_workspaces"])

    def _leases_kept(self, body: dict[str, Any], sent: float) -> None:
        """The primary heard the poll sent at `sent`: the leases of the runs it listed last
        at least a heartbeat timeout from then (renewed, or frozen by a storage failure)."""
        with self._lock:
            for item in body["runs"]:
                handle = self._runs.get((item["run_id"], item["attempt"]))
                if handle is not None:
                    handle.note_contact(sent)

    def _quick_answer(self) -> float:
        """An empty answer faster than this was not held: pause before the next poll. Below
        the primary's hold for an agent with runs, whose polls must keep renewing leases."""
        if self._heartbeat is None:
            return QUICK_ANSWER_SECONDS
        return min(QUICK_ANSWER_SECONDS, busy_poll_hold(self._heartbeat) / 2)

    def _renew_certificate(self) -> None:
        """New key and certificate, without interrupting runs."""
        try:
            self._renew_at = renewal.renew(self.home, self._poll_client)
        except UnknownWorker as e:
            self._unknown_worker(e.code, e.message)
            return
        except (renewal.RenewalError, TransportError) as e:
            log.warning(
                "certificate renewal failed (%s); trying again in %.0f s", e, renewal.RETRY_SECONDS
            )
            self._renew_at = time.time() + renewal.RETRY_SECONDS
            return
        # Every client reconnects with the new pair on its next request; until then open
        # connections finish with the old one, which the primary still accepts.
        self._context = agent_context(self.home)
        log.info(
            "renewed the worker certificate; next renewal at %s",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self._renew_at)),
        )

    def _poll_body(self) -> dict[str, Any]:
        runs = [{"run_id": r, "attempt": a} for r, a in self.held_runs()]
        return {
            "version": __version__,
            "slots": self.slots,
            "draining": self.draining,
            "load": load_report(),
            "runs": runs,
            "abandoned": [{"run_id": r, "attempt": a} for r, a in sorted(self._abandoned)],
            "session": self.session,
            "workspaces": list_workspaces(self.work_dir),
            "evicted_workspaces": sorted(self._evicted)[:MAX_EVICTED_WORKSPACES],
            "job_identity": self.identities.describe(),
            "wait": True,
            # Idle: the primary may hold this poll for long (its keep-alives hear us), once
            # we know the primaries it would list in its answer.
            **({} if runs else self._idle_fields()),
        }

    def _idle_fields(self) -> dict[str, Any]:
        return {"max_hold": IDLE_POLL_MAX_HOLD_SECONDS, "primaries": self.primaries.learned()}

    def _handle_answer(self, answer: dict[str, Any]) -> bool:
        """Act on a poll answer; True if it changed anything (then poll again at once)."""
        acted = False
        self._adopt_slots(answer.get("slots"))
        self._adopt_heartbeat(answer.get("heartbeat_timeout"))
        self._adopt_primaries(answer.get("primaries"))
        # Before the assignments: a pipeline whose cache was cleared may come back here in
        # the same answer, and its new run must find the old workspace gone.
        self._delete_workspaces(answer.get("delete_workspaces"))
        for entry in answer.get("cancel") or []:
            if not isinstance(entry, dict):
                continue
            with self._lock:
                handle = self._runs.get((entry.get("run_id"), entry.get("attempt")))
            # The primary repeats a cancel until the run is finished; only the first counts.
            if handle is not None and not handle.executor.cancelled:
                log.info("run %s attempt %s: cancelled by the primary", *handle.key)
                handle.cancel()
                acted = True
        for data in answer.get("assignments") or []:
            acted = self._accept(data) or acted
        return acted

    def _adopt_slots(self, slots: Any) -> None:
        """The primary's slot count (changed by update-worker or an admin) rules new runs."""
        valid = isinstance(slots, int) and not isinstance(slots, bool)
        if not valid or not MIN_SLOTS <= slots <= MAX_SLOTS or slots == self.slots:
            return
        log.info("slots: %d -> %d (as the primary has it)", self.slots, slots)
        self.slots = slots
        try:
            # So that a restart polls with the same count instead of the old one.
            self.config = update_config(self.home, slots=slots)
        except (ConfigError, OSError) as e:  # keep working with the new count anyway
            log.warning("cannot save slots=%d in the agent home: %s", slots, e)

    def _adopt_primaries(self, urls: Any) -> None:
        """The fleet's live primaries, as the primary knows them: where to go when this one
        cannot be reached. Kept in config.json, so a restart knows them too."""
        if not self.primaries.learn(urls):
            return
        learned = self.primaries.learned()
        log.info("primaries of the fleet: %s", " ".join(learned) or "(only the registered one)")
        try:
            self.config = update_config(self.home, agent_urls=learned)
        except (ConfigError, OSError) as e:
            log.warning("cannot save the primaries' URLs in the agent home: %s", e)

    def _adopt_heartbeat(self, seconds: Any) -> None:
        """Retry the primary at least four times per heartbeat timeout: after an outage (a
        restart, a full disk) it then hears this worker again before its leases expire."""
        if isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds > 0:
            self._retry_cap = min(CAP_SECONDS, max(MIN_RETRY_CAP_SECONDS, seconds / 4))
            if seconds != self._heartbeat:
                log.info(
                    "heartbeat timeout %g s: runs stop after %g s without contact",
                    seconds,
                    fence_after(seconds),
                )
            self._heartbeat = float(seconds)

    def _new_backoff(self) -> Backoff:
        return Backoff(cap=self._retry_cap)

    def _delete_workspaces(self, names: Any) -> None:
        with self._lock:
            busy = {handle.assignment.pipeline for handle in self._runs.values()}
        delete_workspaces(self.home, self.work_dir, names, busy, self._release_identity)

    def _release_identity(self, pipeline: str) -> None:
        # Freeing a job uid ends what it still runs (with a grace): not on the poll thread.
        threading.Thread(
            target=self.identities.release, args=(pipeline,), name="release-uid", daemon=True
        ).start()

    def _accept(self, data: Any) -> bool:
        try:
            assignment = parse_assignment(data)
        except ValueError as e:
            # Unconfirmed, the lease runs out and the primary plans the run again.
            log.error("ignoring a malformed assignment: %s", e)
            return False
        with self._lock:
            if assignment.key in self._runs:
                return False
            if self.draining:
                log.info("draining: not taking run %s", assignment.run_id)
                return False
            if self._slots_taken() >= self.slots:
                log.warning("no free slot for run %s; leaving it to the primary", assignment.run_id)
                return False
            handle = RunHandle(
                assignment,
                self.home,
                self.identities,
                self._pool,
                self.stop,
                self._run_done,
                self._unknown_worker,
                self._kill_grace,
                self._new_backoff,
            )
            self._runs[assignment.key] = handle
        try:
            mark_used(self.home, assignment.pipeline)  # for the cap: least recently used
        except OSError as e:
            log.warning("cannot record the use of workspace %s: %s", assignment.pipeline, e)
        handle.start()
        return True

    def _run_done(self, handle: RunHandle) -> None:
        with self._lock:
            self._runs.pop(handle.key, None)
            self._runs_ended[handle.outcome] = self._runs_ended.get(handle.outcome, 0) + 1
            if handle.fenced:  # its job is dead now: the primary may run it elsewhere
                self._abandoned.add(handle.key)
        if handle.fenced:
            log.warning(
                "run %s attempt %s: stopped for lack of contact; the primary will re-queue it",
                *handle.key,
            )
        self._keep_under_cap()

    def _keep_under_cap(self) -> None:
        """After a run ends: delete the least recently used workspaces past the cap."""
        if self.workspace_max_bytes is None or not self._evicting.acquire(blocking=False):
            return  # no cap, or another run's end is checking it now
        try:
            with self._lock:
                busy = {handle.assignment.pipeline for handle in self._runs.values()}
            evicted = evict(self.home, self.work_dir, self.workspace_max_bytes, busy)
            for name in evicted:
                self._release_identity(name)
            if evicted:
                with self._lock:
                    self._evicted.update(evicted)
                self._interrupt_poll()  # the primary forgets their homes now
        except OSError as e:
            log.warning("cannot check the workspaces' disk use: %s", e)
        finally:
            self._evicting.release()

    def _unknown_worker(self, code: str = CODE_UNKNOWN_WORKER, message: str = "") -> None:
        """The primary refused this worker's certificate: stop, saying why."""
        if self.refused is None:
            self.refused = code
            if code == CODE_CREDENTIALS_CONFLICT:
                log.error(CONFLICT_MESSAGE.format(detail=message, home=self.home))
            else:
                log.error(UNKNOWN_WORKER_MESSAGE)
        self.stop.set()


def poll_client_timeout(body: dict[str, Any]) -> float:
    """How long to wait for the answer to a poll with `body`: past the longest the primary
    may hold it (`max_hold` when idle)."""
    return IDLE_POLL_CLIENT_TIMEOUT_SECONDS if "max_hold" in body else POLL_CLIENT_TIMEOUT_SECONDS
