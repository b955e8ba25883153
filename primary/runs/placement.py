"""Which worker runs a queued run: the decision, and nothing else.

`choose_worker` is a pure function of the candidates and the pipeline: it returns the
chosen worker and the reasons for every candidate, so it can be table-tested and shown to
users. It reads no store and imports no service; `primary.runs.scheduler` applies it.
"""

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    id: str
    name: str
    tags: tuple[str, ...]
    slots: int
    used: int
    active: bool
    locked: bool = False
    draining: bool = False
    version_ok: bool = True
    load1_per_cpu: float = 0.0
    load5_per_cpu: float = 0.0
    conflict: bool = False  # its credentials are in conflict (a copied key was used)
    root_jobs: bool = False  # an admin allows root jobs here
    agent_root: bool = False  # its agent runs as root (so it can run a job as root)

    @property
    def score(self) -> float:
        """Lower is better: the share of slots in use plus the 1-minute load per CPU core."""
        return self.used / self.slots + self.load1_per_cpu


@dataclass(frozen=True)
class Home:
    """Where a pipeline's cache lives, and what the planner knows about waiting for it."""

    worker_id: str | None  # None: never ran, or its cache was cleared
    cache_cleared: bool = False
    waited: float = 0.0  # seconds the run has waited in the queue
    busy_wait: float = 5.0  # how long to wait for a busy home before moving


@dataclass(frozen=True)
class Decision:
    worker_id: str | None
    worker_name: str | None
    rule: str  # kept home, first run, cache cleared, home overloaded, tags changed, ...
    reasons: tuple[str, ...]  # one line per candidate
    waiting: str | None = None  # why the run waits, when no worker was chosen
    new_home: bool = False  # the chosen worker becomes the pipeline's home
    clean_workspace: bool = False  # the worker holds no valid cache for it: start empty


OVERLOAD_LOAD5_PER_CPU = 1.0
WORKER_STATES = (
    "active",
    "inactive",
    "credentials in conflict",
    "locked",
    "draining",
    "version mismatch",
)


def tags_match(pipeline_tags: tuple[str, ...], worker_tags: tuple[str, ...]) -> bool:
    """A pipeline with no tags runs on workers with no tags; one with tags on a worker that
    shares at least one of them."""
    if not pipeline_tags:
        return not worker_tags
    return bool(set(pipeline_tags) & set(worker_tags))


def unavailable(c: Candidate) -> str | None:
    if c.conflict:
        return "credentials in conflict"
    if not c.active:
        return "inactive"
    if not c.version_ok:
        return "version mismatch"
    if c.locked:
        return "locked"
    if c.draining:
        return "draining"
    return None


def root_refusal(c: Candidate) -> str | None:
    """Why a pipeline that runs as root cannot go to this worker, or None."""
    if not c.root_jobs:
        return "root jobs are not allowed here"
    if not c.agent_root:
        return "its agent does not run as root"
    return None


def _lowest_load(
    pipeline_tags: tuple[str, ...],
    candidates: list[Candidate],
    exclude: str | None = None,
    skip_overloaded: bool = False,
    needs_root: bool = False,
) -> tuple[Candidate | None, list[str], int]:
    """The usable candidate with the lowest score, a reason per candidate, and how many
    candidates could take the run but for being busy or unavailable (tags match, and root
    jobs where the pipeline needs them)."""
    reasons: list[str] = []
    usable: list[Candidate] = []
    matched = 0
    for c in sorted(candidates, key=lambda c: (c.name, c.id)):
        if not tags_match(pipeline_tags, c.tags):
            reasons.append(f"{c.name}: passed over, tags {list(c.tags)} do not match")
            continue
        if needs_root and root_refusal(c):
            reasons.append(f"{c.name}: passed over, {root_refusal(c)}")
            continue
        matched += 1
        why = unavailable(c)
        if why is None and c.used >= c.slots:
            why = f"busy ({c.used}/{c.slots} slots in use)"
        if why is None and c.id == exclude:
            why = "the home being left"
        if why is None and skip_overloaded and _overloaded(c):
            why = "overloaded too"
        if why:
            reasons.append(f"{c.name}: passed over, {why}")
            continue
        usable.append(c)
        reasons.append(
            f"{c.name}: eligible, {c.slots - c.used}/{c.slots} slots free, "
            f"load {c.load1_per_cpu:.2f}/core, score {c.score:.2f}"
        )
    best = min(usable, key=lambda c: (c.score, c.name, c.id)) if usable else None
    return best, reasons, matched


def _home_verdict(
    pipeline_tags: tuple[str, ...],
    home: Candidate | None,
    h: Home,
    overload_counts: bool = True,
    needs_root: bool = False,
) -> str:
    """`keep`, `wait`, or the rule that moves the pipeline away from its home."""
    if h.cache_cleared:
        return "cache cleared"
    if h.worker_id is None:
        return "first run"
    if home is None or not home.active or home.conflict:
        return "home not responding"
    if needs_root and root_refusal(home):
        return "home cannot run root jobs"
    if not home.version_ok:
        return "home runs another agent version"
    if not tags_match(pipeline_tags, home.tags):
        return "tags changed"
    if overload_counts and _overloaded(home):
        return "home overloaded"
    if home.locked or home.draining:
        # Usually brief maintenance: keep the home and its cache for when it comes back.
        return f"overflow: home {'locked' if home.locked else 'draining'}"
    if home.used >= home.slots:
        return "wait" if h.waited < h.busy_wait else "overflow: home busy"
    return "keep"


def _overloaded(c: Candidate) -> bool:
    return c.load5_per_cpu > OVERLOAD_LOAD5_PER_CPU


def _lighter_worker_free(
    pipeline_tags: tuple[str, ...], candidates: list[Candidate], home: Candidate, needs_root: bool
) -> bool:
    """Whether another worker that is not overloaded could take the run now."""
    return any(
        c.id != home.id
        and tags_match(pipeline_tags, c.tags)
        and not (needs_root and root_refusal(c))
        and not unavailable(c)
        and c.used < c.slots
        and not _overloaded(c)
        for c in candidates
    )


def choose_worker(
    pipeline_tags: tuple[str, ...],
    candidates: list[Candidate],
    home: Home | None = None,
    needs_root: bool = False,
) -> Decision:
    """Keep the pipeline on its home unless a rule moves it; a moved, cleared or new pipeline
    goes to the usable worker with the lowest load (ties by name). A pipeline that runs as
    root (`needs_root`) only goes to a worker whose admin allows root jobs and whose agent
    runs as root. What workers report (load, draining) only orders and narrows that set."""
    h = home or Home(worker_id=None)
    home_c = next((c for c in candidates if c.id == h.worker_id), None)
    verdict = _home_verdict(pipeline_tags, home_c, h, needs_root=needs_root)
    kept = "kept home"
    if verdict == "home overloaded" and not _lighter_worker_free(
        pipeline_tags, candidates, home_c, needs_root
    ):
        # Overload is a reason to move, not to stop, and moving costs the cache: with no less
        # loaded worker free (agents on one host all report its load), the home rules apply.
        verdict = _home_verdict(pipeline_tags, home_c, h, False, needs_root)
        kept = "kept home: overloaded, but no less loaded worker can take it"
    if verdict == "keep":
        reasons = [
            f"{home_c.name}: home of this pipeline (its cache is there), "
            f"{home_c.slots - home_c.used}/{home_c.slots} slots free"
        ]
        return Decision(home_c.id, home_c.name, kept, tuple(reasons))
    if verdict == "wait":
        return Decision(
            None,
            None,
            "none",
            (f"{home_c.name}: home of this pipeline, busy ({home_c.used}/{home_c.slots})",),
            f"waiting: home worker {home_c.name} is busy; "
            f"moving elsewhere if it is still busy after {h.busy_wait:g} s",
        )
    exclude = h.worker_id if verdict not in ("first run", "cache cleared") else None
    best, reasons, matched = _lowest_load(
        pipeline_tags, candidates, exclude, verdict == "home overloaded", needs_root
    )
    if best is not None:
        if verdict.startswith("overflow"):
            # A busy home keeps its cache and stays home; this one run goes elsewhere, from
            # an empty workspace, so runs of one pipeline never bounce the cache around.
            return Decision(best.id, best.name, verdict, tuple(reasons), clean_workspace=True)
        rule = verdict if verdict in ("first run", "cache cleared") else f"moved: {verdict}"
        return Decision(
            best.id, best.name, rule, tuple(reasons), new_home=True, clean_workspace=True
        )
    if matched == 0 and needs_root and any(tags_match(pipeline_tags, c.tags) for c in candidates):
        waiting = (
            "waiting: the pipeline runs as root, and no worker with matching tags allows root"
            " jobs (an admin allows them: PUT /api/v1/workers/ID/root-jobs)"
        )
    elif matched == 0:
        if pipeline_tags:
            waiting = f"waiting: no worker has any of the tags {list(pipeline_tags)}"
        else:
            waiting = "waiting: no worker without tags is registered"
    else:
        waiting = f"waiting: none of the {matched} matching workers can take it now"
    return Decision(None, None, "none", tuple(reasons), waiting)


def candidate_from_row(row, used: int, now: float, heartbeat_timeout: float) -> Candidate:
    """What the planner (and the worker list, through `state_word`) knows of a worker row."""
    from agent import __version__

    load = json.loads(row["load"]) if row["load"] else {}
    cpus = max(int(load.get("cpus") or 1), 1)
    identity = json.loads(row["job_identity"]) if row["job_identity"] else {}
    return Candidate(
        id=row["id"],
        name=row["name"],
        tags=tuple(json.loads(row["tags"])),
        slots=row["slots"],
        used=used,
        active=row["last_contact"] is not None and now - row["last_contact"] <= heartbeat_timeout,
        locked=bool(row["locked"]),
        draining=bool(row["draining"]) or bool(load.get("draining")),
        version_ok=row["version"] == __version__,
        load1_per_cpu=float(load.get("load1") or 0.0) / cpus,
        load5_per_cpu=float(load.get("load5") or 0.0) / cpus,
        conflict=row["conflict_at"] is not None,
        root_jobs=bool(row["root_jobs"]),
        agent_root=identity.get("mode") in ("pipeline-uids", "job-user"),
    )


def state_word(c: Candidate) -> str:
    """A word or two for people: one of WORKER_STATES."""
    return unavailable(c) or "active"
