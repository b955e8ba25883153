"""The agent's long poll: heartbeat, lease renewal, and the answer (assignments, cancels,
workspaces to delete, slots), held until there is something to say.

Held polls wait on the worker's waiter in `Primary.waiters`, armed before the primary looks
for work, so a wake in between is never lost. On the agent port they wait on the server's
event loop (HeldPoll), in no thread; `Primary.waiters.wake(worker_id)`, `.wake_many(ids)`
and `.wake_all()` end them from any thread.
"""

import json
import re
import threading
import time
from collections.abc import Callable

from agent.protocol import MAX_EVICTED_WORKSPACES, NAME_RE
from primary.context import Primary
from primary.fleet import contacts
from primary.fleet.credentials import PREVIOUS
from primary.metrics import metrics_of
from primary.pipelines import pipelines, static_files
from primary.pipelines import secrets as pipeline_secrets
from primary.runs import leases
from primary.runs.dispatch import ACTIVE_STATES
from primary.runs.scheduler import plan

TOUCH_INTERVAL = 1.0
# The longest hold an agent may ask for (`max_hold`); the primary holds at most
# --idle-poll-hold anyway.
MAX_ACCEPTED_HOLD = 3600.0
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]{0,63}$")


def job_identity(report) -> str | None:
    """The agent's report of who its jobs run as (agent/identity.py), checked and as stored
    (JSON); None when it sent none or nothing valid, as an older agent does."""
    if not isinstance(report, dict):
        return None
    mode = report.get("mode")
    if mode == "pipeline-uids":
        uids = report.get("uids")
        if (
            isinstance(uids, list)
            and len(uids) == 2
            and all(isinstance(u, int) and not isinstance(u, bool) for u in uids)
            and 0 < uids[0] <= uids[1] < 2**32
        ):
            return json.dumps({"mode": mode, "uids": uids})
    elif mode == "job-user":
        user = report.get("user")
        if isinstance(user, str) and ACCOUNT_RE.match(user):
            return json.dumps({"mode": mode, "user": user})
    elif mode == "shared":
        uid = report.get("uid")
        if isinstance(uid, int) and not isinstance(uid, bool) and 0 <= uid < 2**32:
            return json.dumps({"mode": mode, "uid": uid})
    return None


def _touch(primary: Primary, worker: dict, body: dict, now: float) -> None:
    """Record the contact, load, version and who its jobs run as. Liveness is judged in
    seconds, so a poll within a second of the last recorded one writes nothing unless the
    draining flag (or the rest) changed, and one that changes only the contact and the load
    waits for the sweeper's batch (primary/fleet/contacts.py): the busiest path takes no
    write transaction of its own."""
    old_load = json.loads(worker["load"]) if worker["load"] else {}
    identity = job_identity(body.get("job_identity"))
    same = (
        bool(old_load.get("draining")) == bool(body.get("draining"))
        and body.get("version") == worker["version"]
        and identity == worker["job_identity"]
    )
    if (
        same
        and worker["last_contact"] is not None
        and now - worker["last_contact"] < TOUCH_INTERVAL
    ):
        return
    load = _load_of(body)
    if same and contacts.can_wait(worker["last_contact"], now, primary.config.heartbeat_timeout):
        primary.contacts.note(worker["id"], now, load)
        return
    version = body.get("version") if isinstance(body.get("version"), str) else worker["version"]
    with primary.store.transaction() as conn:
        conn.execute(
            "UPDATE workers SET last_contact = ?, load = ?, version = ?, job_identity = ?"
            " WHERE id = ?",
            (now, load, version[:64], identity, worker["id"]),
        )


def _load_of(body: dict) -> str:
    """The load the poll reports (numbers only) and its draining flag, as stored (JSON)."""
    load = body.get("load") if isinstance(body.get("load"), dict) else {}
    load = {k: v for k, v in load.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    load["draining"] = bool(body.get("draining"))
    return json.dumps(load)


def accepted_hold(body: dict) -> float | None:
    """The longest hold the agent says it waits for (`max_hold`, seconds), or None when it
    sent none or nothing valid."""
    value = body.get("max_hold")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return min(float(value), MAX_ACCEPTED_HOLD)  # NaN fails the test above
    return None


def knows_primaries(body: dict, live: list[str]) -> bool:
    """Whether the agent already knows the fleet's live primaries (`primaries` in its idle
    poll: the ones it learned), so that a long hold keeps nothing from it. A fleet of one
    primary (`live` empty) tells agents of none."""
    if not live:
        return True
    known = body.get("primaries")
    return isinstance(known, list) and {u for u in known if isinstance(u, str)} == set(live)


def _listed_runs(body: dict, field: str = "runs") -> set[tuple[int, int]]:
    """The (run_id, attempt) pairs listed in body[field]."""
    held = set()
    for item in body.get(field) or []:
        if (
            isinstance(item, dict)
            and isinstance(item.get("run_id"), int)
            and isinstance(item.get("attempt"), int)
        ):
            held.add((item["run_id"], item["attempt"]))
    return held


def _renew_leases(primary: Primary, worker: dict, held: set[tuple[int, int]], now: float) -> None:
    if not held:
        return
    expires = now + primary.config.heartbeat_timeout
    with primary.store.transaction() as conn:
        for run_id, attempt in sorted(held):  # id order: see leases.grace_after_restart
            conn.execute(
                "UPDATE runs SET lease_expires = ? WHERE id = ? AND attempt = ? AND worker_id = ?"
                " AND state = 'running'",
                (expires, run_id, attempt, worker["id"]),
            )


def _evicted(body: dict) -> list[str]:
    """The workspaces the agent removed to stay under its disk cap (valid names only)."""
    names = body.get("evicted_workspaces")
    if not isinstance(names, list):
        return []
    return sorted(
        {n for n in names[:MAX_EVICTED_WORKSPACES] if isinstance(n, str) and NAME_RE.match(n)}
    )


def _stale_workspaces(primary: Primary, worker: dict, body: dict) -> list[str]:
    """Workspaces the agent has for pipelines whose home it no longer is."""
    names = [n for n in body.get("workspaces") or [] if isinstance(n, str) and NAME_RE.match(n)]
    if not names:
        return []
    marks = ",".join("?" * len(names))
    homes = {
        r["name"]: r["home_worker_id"]
        for r in primary.store.query(
            f"SELECT name, home_worker_id FROM pipelines WHERE name IN ({marks})", tuple(names)
        )
    }
    busy = {
        r["pipeline"]
        for r in primary.store.query(
            "SELECT DISTINCT pipeline FROM runs WHERE worker_id = ?"
            " AND state IN ('assigned', 'running')",
            (worker["id"],),
        )
    }
    return [n for n in names if homes.get(n) != worker["id"] and n not in busy]


def _answer(primary: Primary, worker: dict, held: set[tuple[int, int]], body: dict) -> dict:
    assignments = []
    for run in primary.store.query(
        "SELECT id, attempt, spec, clean_workspace, run_as_root, source FROM runs"
        " WHERE worker_id = ? AND state = 'assigned' ORDER BY id",
        (worker["id"],),
    ):
        if (run["id"], run["attempt"]) in held:
            continue
        spec = json.loads(run["spec"])
        assignments.append(
            {
                "run_id": run["id"],
                "attempt": run["attempt"],
                "pipeline": spec["name"],
                "env": spec["env"],
                "jobs": spec["jobs"],
                "clean_workspace": bool(run["clean_workspace"]),
                "files": static_files.manifest(primary, spec["name"]),
                "secrets": pipeline_secrets.values_for(primary, spec),
                "run_as_root": bool(run["run_as_root"]),
                **({"source": _source(spec, run["source"])} if run["source"] else {}),
            }
        )
    cancel = []
    for run_id, attempt in sorted(held):
        run = primary.store.query_one(
            "SELECT worker_id, attempt, state, cancel_requested, finished_by_worker FROM runs"
            " WHERE id = ?",
            (run_id,),
        )
        if run is None or run["worker_id"] != worker["id"] or run["attempt"] != attempt:
            cancel.append({"run_id": run_id, "attempt": attempt})  # not this worker's any more
        elif run["state"] not in ACTIVE_STATES:
            # Finished by this worker: a poll sent before the finish answer reached the agent
            # still lists it. Nothing is left to kill, and a cancel would only make the
            # agent poll again at once.
            if not run["finished_by_worker"]:
                cancel.append({"run_id": run_id, "attempt": attempt})
        elif run["cancel_requested"]:
            cancel.append({"run_id": run_id, "attempt": attempt})
    slots = primary.store.query_one("SELECT slots FROM workers WHERE id = ?", (worker["id"],))
    return {
        "assignments": assignments,
        "cancel": cancel,
        "delete_workspaces": _stale_workspaces(primary, worker, body),
        "slots": slots["slots"] if slots else worker["slots"],
        # The agent retries a failed poll sooner than this, so that a primary back from an
        # outage hears it before the leases of its runs can expire.
        "heartbeat_timeout": primary.config.heartbeat_timeout,
        **_primaries(primary),
    }


def _source(spec: dict, recorded: str) -> dict:
    """What the agent needs to check out the run's commit: the URL and settings of the
    pipeline's source, the ref and commit the run records; credentials by secret name (the
    values travel in `secrets`)."""
    settings, source = spec["source"], json.loads(recorded)
    answer = {"git": settings["git"], "ref": source["ref"], "sha": source["sha"]}
    answer["clean"] = settings.get("clean", False)
    for key in ("token", "username", "ssh_key", "known_hosts", "ca"):
        if key in settings:
            answer[key] = settings[key]
    return answer


def _primaries(primary: Primary) -> dict:
    """The live primaries of a shared fleet, where the agent goes when this one fails; none
    on SQLite, whose one primary the agent knows already."""
    return {"primaries": primary.agent_urls} if primary.agent_urls else {}


class PollGate:
    """Caps how many polls may be held at once, so held polls never take every thread of the
    agent listener and starve log and status requests.

    A held poll needs a thread, so when every hold is taken the gate asks `grow` for more
    threads (it returns how many it added: 0 at the listener's maximum). Beyond that, polls
    are answered at once with a `poll_after` pause for the agent to keep.
    """

    def __init__(self, limit: int, grow: Callable[[], int] | None = None):
        self._limit = max(limit, 0)
        self._held = 0
        self.grow = grow
        self._lock = threading.Lock()
        self._growing = threading.Lock()  # one grower at a time; the others wait for it

    def _take(self) -> bool:
        with self._lock:
            if self._held < self._limit:
                self._held += 1
                return True
            return False

    def try_hold(self) -> bool:
        if self._take():
            return True
        if self.grow is None:
            return False
        with self._growing:
            while not self._take():
                added = self.grow()
                if added <= 0:
                    return False
                with self._lock:
                    self._limit += added
            return True

    def release(self) -> None:
        with self._lock:
            assert self._held > 0
            self._held -= 1


class HeldPoll:
    """A poll that waits for its worker's wake-up on the server's event loop, not in a
    thread: the server awaits `waiter.wait_async(seconds)`, then calls `finish()` in a
    service thread for the answer, or, when nothing woke it, takes `unwoken()`'s. Made by
    `poll(..., deferrable=True)`."""

    def __init__(
        self,
        primary: Primary,
        gate: PollGate,
        worker: dict,
        held,
        body: dict,
        waiter,
        seconds: float,
        stop: threading.Event,
        answer: dict,
        heard: Callable[[float], float | None] | None = None,
    ) -> None:
        self._primary = primary
        self._gate = gate
        self._worker = worker
        self._held = held
        self._body = body
        self._stop = stop
        self._answer = answer
        self.waiter = waiter
        self.seconds = seconds
        self._holding = metrics_of(primary).poll_held()
        self._holding.__enter__()
        self._done = False
        # Heard while held (fleet/contacts.py): by the connection's keep-alives, or, where
        # the server cannot tell, for as long as the hold lasts.
        self._contact = primary.held_contacts.hold(
            worker["id"], _load_of(body), time.time(), heard or _still_here
        )

    def finish(self) -> dict:
        """The answer once woken or after `seconds` (also when the client has gone, so the
        hold is counted and released exactly once)."""
        self.release()
        answer = _answer(self._primary, self._worker, self._held, self._body)
        return answer

    def unwoken(self) -> dict:
        """The answer made before the hold, when the hold ended without a wake-up. What
        changes its assignments, cancels, slots or primaries wakes the worker (an
        assignment, a cancel, an expired lease, slots from the host, a primary joining or
        leaving), and the waiter was armed before the answer was made, so a fresh one would
        say the same; so does a home that loses its pipeline (its workspace is to go). A
        wake that was lost (another poll of the worker re-armed its waiter) costs a round
        trip: the agent polls again at once, and that poll looks afresh. An idle fleet's
        polls end this way: no thread, no store query."""
        self.release()
        return self._answer

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._primary.held_contacts.end(self._contact)
            self._holding.__exit__(None, None, None)
            self._gate.release()


def _still_here(now: float) -> float:
    return now


def poll(
    primary: Primary,
    gate: PollGate,
    worker: dict,
    body: dict,
    stop: threading.Event,
    deferrable: bool = False,
    heard: Callable[[float], float | None] | None = None,
    received: float | None = None,
) -> dict | HeldPoll:
    """The poll's answer; or, with `deferrable` and nothing to say yet, a HeldPoll for the
    server to wait on (without it, the wait blocks this thread). `heard(now)`: when the
    client was last heard on its connection (primary/server/tcp.py); `received`: when the
    server had the request (time.monotonic()), so time it spent waiting for a thread counts
    in its hold."""
    now = time.time()
    _touch(primary, worker, body, now)
    held = _listed_runs(body)
    session = body.get("session")
    if isinstance(session, str) and 0 < len(session) <= 64 and session != worker["session"]:
        leases.adopt_session(primary, worker, session, held, now)
    _renew_leases(primary, worker, held, now)
    leases.abandon_runs(primary, worker, _listed_runs(body, "abandoned"), now)
    pipelines.forget_evicted_homes(primary, worker["id"], _evicted(body))
    waiter = primary.waiters.arm(worker["id"])
    plan(primary)  # a worker back from inactive, or with a free slot, may take queued runs
    answer = _answer(primary, worker, held, body)
    if answer["assignments"] or answer["cancel"] or not body.get("wait") or stop.is_set():
        return answer
    # An agent with runs must be heard often: its polls renew their leases (agent/fence.py).
    # An idle one is held as long as it waits, when its wait costs no thread and its
    # answer's list of primaries (where it fails over to) is not news to it.
    if held or answer["delete_workspaces"]:
        # With workspaces to delete too: said within seconds, not a long hold later (a wake
        # that came between two polls is not kept), yet not at once, so that a deletion
        # that keeps failing on the host costs what a busy agent's polls do, not a loop.
        hold = primary.config.busy_poll_hold_seconds
    elif deferrable and knows_primaries(body, primary.agent_urls):
        hold = primary.config.idle_poll_hold_seconds(accepted_hold(body))
    else:
        hold = primary.config.idle_poll_hold_seconds(None)
    if worker.get("cert") == PREVIOUS and worker["cert_renewed_at"] is not None:
        # On the certificate a renewal superseded: the poll after the switch-over is refused
        # (fleet/credentials.py), so this one ends with it.
        left = worker["cert_renewed_at"] + primary.config.cert_switch_over - now
        hold = min(hold, max(left, 0.0))
    full_hold = hold
    if received is not None:
        # The agent's read timeout runs from its send: a poll that queued for a thread (a
        # fleet reconnecting at once) must not be held so long that the agent gives up on
        # it, reconnects and sends it again.
        hold -= time.monotonic() - received
        if hold <= 0:
            return answer
    metrics = metrics_of(primary)
    if not gate.try_hold():
        # No room to hold it: the agent waits as long as a held poll would have.
        metrics.poll_deferred()
        return {**answer, "poll_after": full_hold}
    if deferrable:
        return HeldPoll(primary, gate, worker, held, body, waiter, hold, stop, answer, heard)
    try:
        with metrics.poll_held():
            waiter.wait(hold)
    finally:
        gate.release()
    if stop.is_set():
        return answer
    return _answer(primary, worker, held, body)
