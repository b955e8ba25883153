"""Table tests of the pure scheduling decision."""

import pytest

from primary.scheduler import Candidate, choose_worker, tags_match


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
    assert decision.worker_name == "free" and decision.rule == "lowest load"
    assert decision.reasons == (
        "busy: passed over, busy (1/1 slots in use)",
        "dead: passed over, inactive",
        "free: eligible, 2/2 slots free, load 0.00/core, score 0.00",
        "mac: passed over, tags ['macos'] do not match",
    )
