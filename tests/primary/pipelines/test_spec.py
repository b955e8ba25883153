import pytest

from primary.pipelines.spec import SpecError, parse_pipeline

GOOD = """
name: hello
tags: [linux]
env: {GREETING: hi, COUNT: 3}
jobs:
  - name: test
    needs: [build]
    steps: ["make test"]
  - name: build
    steps: ["echo $GREETING", "make"]
    timeout: 600
"""


def test_good_pipeline_is_normalised_and_ordered_by_needs():
    spec = parse_pipeline(GOOD)
    assert spec["name"] == "hello" and spec["tags"] == ["linux"]
    assert spec["env"] == {"GREETING": "hi", "COUNT": "3"}
    assert [j["name"] for j in spec["jobs"]] == ["build", "test"]
    assert spec["jobs"][0]["timeout"] == 600 and spec["jobs"][1]["timeout"] == 3600
    assert spec["retries_on_lost"] == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2", "yaml: did not find expected ',' or ']'"),
        ("- a\n- b\n", "(document): a pipeline is a mapping"),
        ("name: x\n", "jobs: must be a non-empty list of jobs"),
        ("name: x\njobs: []\n", "jobs: must be a non-empty list of jobs (line 2)"),
        ("name: x\nstages: []\njobs: []\n", "stages: unknown field"),
        (
            "name: x\njobs:\n  - name: a\n    steps: ['x']\n  - name: a\n    steps: ['y']\n",
            "jobs[1].name: duplicate job name 'a' (line 5)",
        ),
        (
            "name: x\njobs:\n  - name: a\n    steps: ['x']\n    needs: [b]\n"
            "  - name: b\n    steps: ['y']\n    needs: [a]\n",
            "jobs: the needs form a cycle",
        ),
        (
            "name: x\njobs:\n  - name: a\n    steps: ['x']\n    needs: [a]\n",
            "jobs[0].needs: a job cannot need itself",
        ),
        (
            "name: x\njobs:\n  - name: a\n    steps: ['x']\n    timeout: 0\n",
            "jobs[0].timeout: must be whole seconds",
        ),
        (
            "name: x\njobs:\n  - name: a\n    steps: ['x']\n    env: {1X: y}\n",
            "jobs[0].env.1X: is not a valid environment variable name",
        ),
        (
            "name: x\nenv: {A: [1]}\njobs:\n  - name: a\n    steps: ['x']\n",
            "env.A: must be a string or a number",
        ),
        ("name: \"a\\x01b\"\njobs:\n  - name: a\n    steps: ['x']\n", "name: must be 1-64"),
        (
            "name: x\nretries_on_lost: -1\njobs:\n  - name: a\n    steps: ['x']\n",
            "retries_on_lost: must be a whole number",
        ),
        ("name: x\ntags: [a, a]\njobs:\n  - name: a\n    steps: ['x']\n", "tags: has duplicates"),
    ],
)
def test_bad_pipelines_name_the_field(text, message):
    with pytest.raises(SpecError) as err:
        parse_pipeline(text)
    assert str(err.value).startswith(message)
