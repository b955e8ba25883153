"""A pipeline's `keep:` (its retention policy) and the fleet's, validated as pure data."""

import pytest

from primary.errors import BadRequest
from primary.pipelines.spec import SpecError, parse_pipeline
from primary.runs.retention import Keep, keep_of, validate_policy

PIPELINE = "name: p\n{keep}\njobs:\n  - name: j\n    steps: ['true']\n"


def test_keep_is_normalised_and_absent_without_it():
    assert "keep" not in parse_pipeline(PIPELINE.format(keep=""))
    assert parse_pipeline(PIPELINE.format(keep="keep: {days: 7}"))["keep"] == {"days": 7}
    spec = parse_pipeline(PIPELINE.format(keep="keep: {days: 7, runs: 20}"))
    assert spec["keep"] == {"days": 7, "runs": 20}
    assert parse_pipeline(PIPELINE.format(keep="keep: {runs: null}"))["keep"] == {}


@pytest.mark.parametrize(
    ("keep", "message"),
    [
        ("keep: 5", "keep: must be a mapping with days and/or runs (line 2)"),
        ("keep: {weeks: 1}", "keep.weeks: unknown field; expected one of days, runs (line 2)"),
        ("keep: {days: 0}", "keep.days: must be a whole number from 1 to 36500 (line 2)"),
        ("keep: {days: 1.5}", "keep.days: must be a whole number from 1 to 36500 (line 2)"),
        ("keep: {runs: true}", "keep.runs: must be a whole number from 1 to 1000000 (line 2)"),
        ("keep: {runs: 1000001}", "keep.runs: must be a whole number from 1 to 1000000 (line 2)"),
    ],
)
def test_bad_keep_is_refused_with_its_field(keep, message):
    with pytest.raises(SpecError) as caught:
        parse_pipeline(PIPELINE.format(keep=keep))
    assert str(caught.value) == message


def test_a_pipelines_keep_replaces_the_fleet_default_whole():
    fleet = {"days": 30, "runs": 100, "workspace_days": 14}
    assert keep_of(fleet, None) == Keep(days=30, runs=100)  # a deleted pipeline's runs
    assert keep_of(fleet, {"name": "p"}) == Keep(days=30, runs=100)
    assert keep_of(fleet, {"keep": {"runs": 5}}) == Keep(runs=5)
    assert keep_of(fleet, {"keep": {}}).keeps_everything()
    assert keep_of({}, None).keeps_everything()


def test_fleet_policy_validation():
    assert validate_policy({"days": 30, "runs": None, "workspace_days": 7}) == {
        "days": 30,
        "workspace_days": 7,
    }
    assert validate_policy({}) == {}
    for body, message in (
        ([], "(body): must be a JSON object with days, runs and/or workspace_days"),
        ({"days": -1}, "days: must be a whole number from 1 to 36500"),
        ({"workspace_days": "7"}, "workspace_days: must be a whole number from 1 to 36500"),
    ):
        with pytest.raises(BadRequest) as caught:
            validate_policy(body)
        assert caught.value.message == message
