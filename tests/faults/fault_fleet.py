"""Helpers of the fault-injection tests: a fleet torn down whatever state a test left it
in, and the event files the tests' steps append to."""

from dataclasses import dataclass
from pathlib import Path

from fleet import (
    Agent,
    Primary,
    kill_host,
    kill_workspace_processes,
    register_agent,
    shared_file,
    wait_for,
)

# Seconds without contact before a worker is inactive and its runs' leases expire. Short, so
# losses are seen quickly; long enough that a loaded 2-core machine never loses a live one.
HEARTBEAT = 6


class Fleet:
    """Agents of one primary, by name; every one is killed (with its jobs) at the end."""

    def __init__(self, primary: Primary, root) -> None:
        self.primary = primary
        self.root = root
        self.agents: dict[str, Agent] = {}

    def add(self, name: str, slots: int = 1, start: bool = True) -> Agent:
        result = register_agent(self.primary, self.root, name, slots=slots)
        assert result.returncode == 0, result.stderr
        agent = Agent(name=name, home=self.root / name, log_path=self.root / f"{name}.log")
        self.agents[name] = agent
        if start:
            self.start(agent)
        return agent

    def start(self, agent: Agent, wait_active: bool = True) -> None:
        agent.start()
        if wait_active:
            self.wait_active(agent.name)

    def wait_active(self, name: str, timeout: float = 30) -> None:
        wait_for(
            lambda: (w := self.primary.worker(name)) and w["state"] == "active",
            timeout,
            f"worker {name} to be active",
        )

    def log(self, name: str) -> str:
        return self.agents[name].log_path.read_text(errors="replace")

    def teardown(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.poll() is None:
                kill_host(agent)
        # Jobs an agent killed alone (not as a host) left running, if the test did not end them.
        kill_workspace_processes(self.root)


# -- A long job: attempt 1 writes numbered lines for a minute; later attempts five. -----


def lines(attempt: int, count: int) -> bytes:
    return b"".join(f"attempt {attempt} line {i}\n".encode() for i in range(1, count + 1))


def pipeline(name: str, events_file=None) -> str:
    """Attempt 1 writes a numbered line every 20 ms for a minute (it is meant to be cut
    short); later attempts write five lines and end."""
    tick = f"; {event(events_file, 'tick')}" if events_file else ""
    start = f"{event(events_file, 'start')}; " if events_file else ""
    end = f"; {event(events_file, 'end')}" if events_file else ""
    step = (
        f'{start}n=3000; [ "$CIFLEET_RUN_ATTEMPT" = 1 ] || n=5; i=1; '
        f'while [ $i -le $n ]; do echo "attempt $CIFLEET_RUN_ATTEMPT line $i"{tick}; '
        f"i=$((i+1)); sleep 0.02; done{end}"
    )
    return f"name: {name}\njobs:\n  - name: work\n    steps: ['{step}']\n"


def shipped_lines(primary, run_id: int) -> int:
    return primary.job_log(run_id, "work").count(b"\n")


def start_long_run(primary: Primary, name: str, spare: str) -> int:
    """Trigger the long pipeline `name` while the worker `spare` is locked, so attempt 1
    runs on the other one; return once it has shipped five lines (`spare` is locked still)."""
    primary.client.json("POST", f"/api/v1/workers/{spare}/lock")
    primary.pipeline(pipeline(name))
    run_id = primary.trigger(name)
    wait_for(lambda: shipped_lines(primary, run_id) >= 5, 30, "attempt 1 to ship 5 lines")
    return run_id


def wait_lost_then_done(primary: Primary, run_id: int, lost_on: str, done_on: str) -> dict:
    """The run, once done: attempt 1 lost on `lost_on`, attempt 2 five lines on `done_on`."""
    run = primary.wait_run(run_id, timeout=HEARTBEAT + 60)
    assert run["state"] == "success", run
    assert [(a["worker_name"], a["outcome"]) for a in run["attempts"]] == [
        (lost_on, "lost"),
        (done_on, "success"),
    ], run["attempts"]
    assert primary.job_log(run_id, "work") == lines(2, 5)
    return run


# -- Event files: each step appends "<run> <attempt> <worker> <kind> <ns>" lines. -------------


def event(path: Path, kind: str) -> str:
    """Shell for a step: append one event line for this job to `path`. The worker is read
    from the agent home in CIFLEET_WORKSPACE (HOME/workspaces/PIPELINE), with no process
    started but `date`."""
    shared_file(path)
    return (
        'w="${CIFLEET_WORKSPACE%/workspaces/*}"; '
        f'echo "$CIFLEET_RUN_ID $CIFLEET_RUN_ATTEMPT ${{w##*/}} {kind} $(date +%s%N)" >> {path}'
    )


@dataclass(frozen=True)
class Event:
    run: int
    attempt: int
    worker: str
    kind: str
    ns: int


def read_events(path: Path) -> list[Event]:
    events = []
    for line in path.read_text().splitlines() if path.exists() else []:
        run, attempt, worker, kind, ns = line.split(" ")
        events.append(Event(int(run), int(attempt), worker, kind, int(ns)))
    return events


@dataclass
class Execution:
    """One attempt of a run as its step saw it: start, and end (None: it never ended)."""

    run: int
    attempt: int
    worker: str
    start: int
    end: int | None = None


def executions(events: list[Event]) -> dict[int, list[Execution]]:
    """Per run, its executions in start order. Fails if an attempt started or ended twice."""
    found: dict[tuple[int, int], Execution] = {}
    for e in sorted(events, key=lambda e: e.ns):
        key = (e.run, e.attempt)
        if e.kind == "start":
            assert key not in found, f"run {e.run} attempt {e.attempt} started twice: {events}"
            found[key] = Execution(e.run, e.attempt, e.worker, e.ns)
        elif e.kind in ("end", "term"):  # term: ended by a signal it could trap
            ex = found.get(key)
            assert ex is not None, f"run {e.run} attempt {e.attempt} ended without a start"
            assert ex.end is None, f"run {e.run} attempt {e.attempt} ended twice"
            assert ex.worker == e.worker, f"run {e.run} attempt {e.attempt} moved workers"
            ex.end = e.ns
    by_run: dict[int, list[Execution]] = {}
    for ex in sorted(found.values(), key=lambda x: x.start):
        by_run.setdefault(ex.run, []).append(ex)
    return by_run


@dataclass(frozen=True)
class Kill:
    """A kill -9 of a worker at `ns`: of its host (the agent and its jobs) or, if not
    `host`, of the agent alone (its jobs run on)."""

    ns: int
    host: bool


def assert_never_twice_at_once(
    by_run: dict[int, list[Execution]], kills: dict[str, list[Kill]] | None = None
) -> None:
    """No run executed on two workers (or twice on one) at the same time. An execution that
    never ended was ended by a host kill of its worker (`kills`: worker -> kills), the first
    one after it started; a kill of the agent alone ends no job."""
    kills = kills or {}
    for run, runs in by_run.items():
        for earlier, later in zip(runs, runs[1:], strict=False):
            end = earlier.end
            if end is None:
                host_kills = [k.ns for k in kills.get(earlier.worker, []) if k.host]
                end = min((ns for ns in host_kills if ns > earlier.start), default=None)
            assert end is not None, (
                f"run {run}: attempt {earlier.attempt} on {earlier.worker} never ended and its "
                f"host was not killed, yet attempt {later.attempt} ran on {later.worker}"
            )
            assert end <= later.start, (
                f"run {run} ran twice at once: attempt {earlier.attempt} on {earlier.worker} "
                f"until {end}, attempt {later.attempt} on {later.worker} from {later.start}"
            )
