"""Table tests of the pure placement decision (primary.runs.placement)."""

import pytest

from agent import __version__
from primary.runs.placement import (
    Candidate,
    Home,
    candidate_from_row,
    choose_worker,
    state_word,
    tags_match,
)


def w(name, tags=(), slots=1, used=0, active=True, **kw) -> Candidate:
    return Candidate(
        id=f"id-{name}", name=name, tags=tuple(tags), slots=slots, used=used, active=active, **kw
    )


@pytest.mark.parametrize(
    ("pipeline", "worker", "match"),
    [
        ((), (), True),
        ((), ("a",), False),
        (("a",), (), False),
        (("b", "c"), ("a", "b"), True),
        (("c",), ("a", "b"), False),
    ],
)
def test_tags_match_at_least_one(pipeline, worker, match):
    assert tags_match(pipeline, worker) is match


@pytest.mark.parametrize(
    ("pipeline_tags", "candidates", "chosen", "waiting"),
    [
        ((), [w("a"), w("b")], "a", None),  # tie: by name
        ((), [w("a", used=1, slots=2), w("b", slots=2)], "b", None),  # fewer slots in use
        ((), [w("a", load1_per_cpu=0.9), w("b", load1_per_cpu=0.1)], "b", None),
        ((), [w("a", used=1)], None, "waiting: none of the 1 matching workers can take it now"),
        ((), [w("a", tags=["x"])], None, "waiting: no worker without tags is registered"),
        (("gpu",), [w("a")], None, "waiting: no worker has any of the tags ['gpu']"),
        (("gpu",), [w("a", tags=["gpu"], active=False), w("b", tags=["gpu", "linux"])], "b", None),
        (
            (),
            [w("a", locked=True), w("b", draining=True), w("c", version_ok=False)],
            None,
            "waiting: none of the 3 matching workers can take it now",
        ),
    ],
)
def test_choose_worker(pipeline_tags, candidates, chosen, waiting):
    decision = choose_worker(pipeline_tags, candidates)
    assert decision.worker_name == chosen
    assert decision.waiting == waiting
    assert len(decision.reasons) == len(candidates)


def test_reasons_say_why_each_candidate_was_passed_over():
    decision = choose_worker(
        ("linux",),
        [
            w("busy", tags=["linux"], used=1),
            w("dead", tags=["linux"], active=False),
            w("mac", tags=["macos"]),
            w("free", tags=["linux"], slots=2),
        ],
    )
    assert decision.worker_name == "free" and decision.rule == "first run"
    assert decision.reasons == (
        "busy: passed over, busy (1/1 slots in use)",
        "dead: passed over, inactive",
        "free: eligible, 2/2 slots free, load 0.00/core, score 0.00",
        "mac: passed over, tags ['macos'] do not match",
    )


HOME = "id-home"


def fleet(**home_changes) -> list[Candidate]:
    """A home worker (changed as given) and two others; `other` is the least loaded."""
    home = dict(name="home", tags=("linux",), slots=2)
    home.update(home_changes)
    return [
        w(**home),
        w("other", tags=["linux"], slots=2),
        w("third", tags=["linux"], slots=2, used=1),
    ]


@pytest.mark.parametrize(
    ("home", "candidates", "chosen", "rule", "new_home"),
    [
        (Home(HOME), fleet(), "home", "kept home", False),
        (Home(HOME), fleet(used=1), "home", "kept home", False),  # a free slot left
        (Home(None), fleet(), "home", "first run", True),  # lowest load: tie, then name
        (Home(None, cache_cleared=True), fleet(), "home", "cache cleared", True),
        (Home(HOME), fleet(load5_per_cpu=1.5), "other", "moved: home overloaded", True),
        (Home(HOME), fleet(tags=("macos",)), "other", "moved: tags changed", True),
        (Home(HOME), fleet(active=False), "other", "moved: home not responding", True),
        (Home("id-gone"), fleet(), "home", "moved: home not responding", True),
        (
            Home(HOME),
            fleet(version_ok=False),
            "other",
            "moved: home runs another agent version",
            True,
        ),
        (Home(HOME), fleet(locked=True), "other", "overflow: home locked", False),
        (Home(HOME), fleet(draining=True), "other", "overflow: home draining", False),
    ],
)
def test_sticky_home_rules(home, candidates, chosen, rule, new_home):
    decision = choose_worker(("linux",), candidates, home)
    assert (decision.worker_name, decision.rule, decision.new_home) == (chosen, rule, new_home)
    # Only keeping the home keeps the workspace; every other choice starts empty.
    assert decision.clean_workspace is (not rule.startswith("kept home"))


def test_a_busy_home_overflows_without_moving_after_the_wait():
    decision = choose_worker(("linux",), fleet(used=2), Home(HOME, waited=6, busy_wait=5))
    assert (decision.worker_name, decision.rule) == ("other", "overflow: home busy")
    assert decision.new_home is False and decision.clean_workspace is True


def test_busy_home_is_waited_for_a_few_seconds():
    decision = choose_worker(("linux",), fleet(used=2), Home(HOME, waited=1, busy_wait=5))
    assert decision.worker_id is None
    assert decision.waiting == (
        "waiting: home worker home is busy; moving elsewhere if it is still busy after 5 s"
    )


def test_an_overloaded_home_still_runs_it_when_no_other_worker_can():
    decision = choose_worker(
        (), [w("home", slots=2, load5_per_cpu=3.0), w("busy", used=1)], Home(HOME)
    )
    assert decision.worker_name == "home"
    assert decision.rule == "kept home: overloaded, but no less loaded worker can take it"
    assert decision.clean_workspace is False and decision.new_home is False


def test_an_overloaded_home_stays_when_every_other_worker_is_as_loaded():
    # Agents on one host report the same load: moving would cost the cache for nothing.
    candidates = [w("home", slots=2, load5_per_cpu=2.0), w("other", slots=2, load5_per_cpu=2.0)]
    decision = choose_worker((), candidates, Home(HOME))
    assert decision.worker_name == "home"
    assert decision.rule == "kept home: overloaded, but no less loaded worker can take it"


def test_an_overloaded_home_moves_only_to_a_worker_that_is_not_overloaded():
    candidates = [
        w("home", slots=2, load5_per_cpu=2.0),
        w("big", slots=8, load5_per_cpu=1.5),  # the best score by slots, but overloaded
        w("small", slots=1),
    ]
    decision = choose_worker((), candidates, Home(HOME))
    assert (decision.worker_name, decision.rule) == ("small", "moved: home overloaded")
    assert "big: passed over, overloaded too" in decision.reasons


def test_an_overloaded_busy_home_with_no_lighter_worker_is_waited_for_then_overflows():
    candidates = [w("home", slots=1, used=1, load5_per_cpu=2.0), w("other", load5_per_cpu=2.0)]
    waiting = choose_worker((), candidates, Home(HOME, waited=1, busy_wait=5))
    assert waiting.worker_id is None and waiting.waiting.startswith("waiting: home worker home")
    overflow = choose_worker((), candidates, Home(HOME, waited=6, busy_wait=5))
    assert (overflow.worker_name, overflow.rule) == ("other", "overflow: home busy")
    assert overflow.new_home is False


def test_a_moved_pipeline_never_goes_back_to_the_home_it_leaves():
    # The overloaded home has the best score by slots, but it is being left.
    candidates = [w("home", slots=4, load5_per_cpu=2.0), w("other", slots=1)]
    decision = choose_worker((), candidates, Home(HOME))
    assert decision.worker_name == "other"
    assert "home: passed over, the home being left" in decision.reasons


def _row(**changes) -> dict:
    row = {
        "id": "w1",
        "name": "one",
        "tags": '["linux"]',
        "slots": 2,
        "last_contact": 1000.0,
        "locked": 0,
        "draining": 0,
        "version": __version__,
        "load": '{"cpus": 4, "load1": 2.0, "load5": 6.0}',
        "job_identity": None,
        "root_jobs": 0,
        "conflict_at": None,
    }
    return {**row, **changes}


@pytest.mark.parametrize(
    "changes, word",
    [
        ({}, "active"),
        ({"last_contact": None}, "inactive"),
        ({"last_contact": 969.0}, "inactive"),  # 31 s ago, timeout 30 s
        ({"last_contact": None, "locked": 1}, "inactive"),  # not heard of beats locked
        ({"version": "0.0.0-old"}, "version mismatch"),
        ({"version": "0.0.0-old", "locked": 1}, "version mismatch"),
        ({"locked": 1, "draining": 1}, "locked"),
        ({"draining": 1}, "draining"),
        ({"load": '{"draining": true}'}, "draining"),  # the agent says it drains (SIGTERM)
    ],
)
def test_the_state_people_see_is_the_one_the_planner_uses(changes, word):
    candidate = candidate_from_row(_row(**changes), used=1, now=1000.0, heartbeat_timeout=30.0)
    assert state_word(candidate) == word
    chosen = choose_worker(("linux",), [candidate], None).worker_id
    assert (chosen is not None) == (word == "active")


def test_a_row_becomes_a_candidate_with_its_load_per_core():
    candidate = candidate_from_row(_row(), used=1, now=1000.0, heartbeat_timeout=30.0)
    assert candidate.tags == ("linux",)
    assert (candidate.slots, candidate.used) == (2, 1)
    assert (candidate.load1_per_cpu, candidate.load5_per_cpu) == (0.5, 1.5)


ROOT_OK = {"root_jobs": True, "agent_root": True}


@pytest.mark.parametrize(
    ("candidates", "chosen", "reason"),
    [
        # Only where an admin allowed root jobs and the agent runs as root.
        ([w("a"), w("b", **ROOT_OK)], "b", "a: passed over, root jobs are not allowed here"),
        (
            [w("a", root_jobs=True), w("b", **ROOT_OK)],
            "b",
            "a: passed over, its agent does not run as root",
        ),
        # However little load the others report, they are not eligible.
        (
            [w("a", load1_per_cpu=0.0), w("b", used=1, slots=4, load1_per_cpu=3.0, **ROOT_OK)],
            "b",
            "a: passed over, root jobs are not allowed here",
        ),
    ],
)
def test_a_root_pipeline_goes_only_where_root_jobs_are_allowed(candidates, chosen, reason):
    decision = choose_worker((), candidates, needs_root=True)
    assert decision.worker_name == chosen
    assert reason in decision.reasons


def test_a_root_pipeline_waits_with_the_reason_when_no_worker_allows_it():
    decision = choose_worker(
        ("linux",), [w("a", ("linux",)), w("b", ("gpu",), **ROOT_OK)], None, True
    )
    assert decision.worker_id is None
    assert decision.waiting == (
        "waiting: the pipeline runs as root, and no worker with matching tags allows root"
        " jobs (an admin allows them: PUT /api/v1/workers/ID/root-jobs)"
    )
    # A pipeline that does not ask for root is not held back by the setting.
    assert choose_worker(("linux",), [w("a", ("linux",))]).worker_name == "a"


def test_a_root_pipeline_leaves_a_home_that_no_longer_allows_root_jobs():
    home = Home(worker_id="id-a")
    decision = choose_worker((), [w("a"), w("b", **ROOT_OK)], home, needs_root=True)
    assert (decision.worker_name, decision.rule) == ("b", "moved: home cannot run root jobs")
    assert decision.clean_workspace and decision.new_home


def test_a_worker_in_conflict_gets_nothing_and_says_why():
    conflicted = w("a", conflict=True)
    assert state_word(conflicted) == "credentials in conflict"
    decision = choose_worker((), [conflicted, w("b", used=1)], Home(worker_id="id-a"))
    assert decision.worker_id is None
    assert "a: passed over, credentials in conflict" in decision.reasons
    assert choose_worker((), [conflicted], Home("id-a")).waiting.startswith("waiting: none of")


@pytest.mark.parametrize(
    ("identity", "agent_root"),
    [
        (None, False),  # an agent that has not said (an older one): not root
        ('{"mode": "shared", "uid": 1000}', False),
        ('{"mode": "pipeline-uids", "uids": [65536, 66535]}', True),
        ('{"mode": "job-user", "user": "ci"}', True),
    ],
)
def test_root_jobs_need_the_admin_setting_and_an_agent_that_runs_as_root(identity, agent_root):
    c = candidate_from_row(_row(job_identity=identity, root_jobs=1), 0, 1000.0, 30.0)
    assert (c.root_jobs, c.agent_root) == (True, agent_root)
    assert candidate_from_row(_row(job_identity=identity), 0, 1000.0, 30.0).root_jobs is False
