"""Which worker runs a queued run.

`choose_worker` is the decision: a pure function of the candidates and the pipeline, which
returns the chosen worker and the reasons for every candidate, so it can be table-tested and
shown to users. `plan` applies it to the queue in one transaction and wakes the chosen
workers' long polls.
"""

import dataclasses
import json
import time
from dataclasses import dataclass

from primary.context import Primary


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

    @property
    def score(self) -> float:
        """Lower is better: the share of slots in use plus the 1-minute load per CPU core."""
        return self.used / self.slots + self.load1_per_cpu


@dataclass(frozen=True)
class Decision:
    worker_id: str | None
    worker_name: str | None
    rule: str
    reasons: tuple[str, ...]  # one line per candidate
    waiting: str | None = None  # why the run waits, when no worker was chosen


def tags_match(pipeline_tags: tuple[str, ...], worker_tags: tuple[str, ...]) -> bool:
    """A pipeline with no tags runs on workers with no tags; one with tags on a worker that
    shares at least one of them."""
    if not pipeline_tags:
        return not worker_tags
    return bool(set(pipeline_tags) & set(worker_tags))


def choose_worker(pipeline_tags: tuple[str, ...], candidates: list[Candidate]) -> Decision:
    reasons: list[str] = []
    usable: list[Candidate] = []
    tag_matches = 0
    for c in sorted(candidates, key=lambda c: (c.name, c.id)):
        if not tags_match(pipeline_tags, c.tags):
            reasons.append(f"{c.name}: passed over, tags {list(c.tags)} do not match")
            continue
        tag_matches += 1
        why = None
        if not c.active:
            why = "inactive"
        elif not c.version_ok:
            why = "version mismatch"
        elif c.locked:
            why = "locked"
        elif c.draining:
            why = "draining"
        elif c.used >= c.slots:
            why = f"busy ({c.used}/{c.slots} slots in use)"
        if why:
            reasons.append(f"{c.name}: passed over, {why}")
            continue
        usable.append(c)
        reasons.append(
            f"{c.name}: eligible, {c.slots - c.used}/{c.slots} slots free, "
            f"load {c.load1_per_cpu:.2f}/core, score {c.score:.2f}"
        )
    if usable:
        best = min(usable, key=lambda c: (c.score, c.name, c.id))
        return Decision(best.id, best.name, "lowest load", tuple(reasons))
    if tag_matches == 0:
        if pipeline_tags:
            waiting = f"waiting: no worker has any of the tags {list(pipeline_tags)}"
        else:
            waiting = "waiting: no worker without tags is registered"
    else:
        waiting = f"waiting: none of the {tag_matches} matching workers can take it now"
    return Decision(None, None, "none", tuple(reasons), waiting)


def load_candidates(primary: Primary, now: float) -> list[Candidate]:
    from agent import __version__

    used = {
        r["worker_id"]: r["n"]
        for r in primary.store.query(
            "SELECT worker_id, COUNT(*) AS n FROM runs WHERE state IN ('assigned', 'running')"
            " GROUP BY worker_id"
        )
    }
    candidates = []
    for w in primary.store.query("SELECT * FROM workers"):
        load = json.loads(w["load"]) if w["load"] else {}
        cpus = max(int(load.get("cpus") or 1), 1)
        candidates.append(
            Candidate(
                id=w["id"],
                name=w["name"],
                tags=tuple(json.loads(w["tags"])),
                slots=w["slots"],
                used=used.get(w["id"], 0),
                active=w["last_contact"] is not None
                and now - w["last_contact"] <= primary.config.heartbeat_timeout,
                locked=bool(w["locked"]),
                draining=bool(w["draining"]) or bool(load.get("draining")),
                version_ok=w["version"] == __version__,
                load1_per_cpu=float(load.get("load1") or 0.0) / cpus,
            )
        )
    return candidates


def plan(primary: Primary) -> int:
    """Assign every queued run that can start now, oldest first. Returns how many."""
    woken: set[str] = set()
    assigned = 0
    now = time.time()
    with primary.plan_lock, primary.store.transaction() as conn:
        queued = conn.execute(
            "SELECT id, tags, reason, attempt FROM runs WHERE state = 'queued' ORDER BY id"
        ).fetchall()
        if not queued:
            return 0
        candidates = {c.id: c for c in load_candidates(primary, now)}
        for run in queued:
            decision = choose_worker(tuple(json.loads(run["tags"])), list(candidates.values()))
            if decision.worker_id is None:
                if run["reason"] != decision.waiting:
                    conn.execute(
                        "UPDATE runs SET reason = ?, placement = ? WHERE id = ?",
                        (decision.waiting, json.dumps(decision.reasons), run["id"]),
                    )
                continue
            conn.execute(
                "UPDATE runs SET state = 'assigned', worker_id = ?, worker_name = ?,"
                " attempt = attempt + 1, lease_expires = ?, assigned_at = ?, reason = NULL,"
                " placement = ? WHERE id = ?",
                (
                    decision.worker_id,
                    decision.worker_name,
                    now + primary.config.confirm_timeout,
                    now,
                    json.dumps(
                        [f"chosen: {decision.worker_name} ({decision.rule})", *decision.reasons]
                    ),
                    run["id"],
                ),
            )
            conn.execute(
                "UPDATE jobs SET state = 'pending', exit_code = NULL, started_at = NULL,"
                " finished_at = NULL WHERE run_id = ?",
                (run["id"],),
            )
            chosen = candidates[decision.worker_id]
            candidates[chosen.id] = dataclasses.replace(chosen, used=chosen.used + 1)
            woken.add(chosen.id)
            assigned += 1
    for worker_id in woken:
        primary.waiters.wake(worker_id)
    return assigned
