"""A pipeline run end to end: real primary, two real agents, logs compared byte for byte."""

from fleet import wait_file_step, wait_for
from pgcluster import both_engines

pytestmark = both_engines

BIG_LINE = b"cifleet 0123456789 abcdefghijklmnopqrstuvwxyz\n"
BIG_SIZE = 5 * 1024 * 1024

BYTES_PIPELINE = r"""
name: bytes
env:
  WHO: cifleet
jobs:
  - name: prepare
    steps:
      - printf 'caf\351 \377\376 raw bytes\r\n'
      - printf 'windows line\r\nunix line\n'
      - echo out1; echo err1 >&2; echo out2
      - echo "hello $WHO $JOB_ONLY"
    env:
      JOB_ONLY: job-env
  - name: big
    needs: [prepare]
    steps:
      - yes 'cifleet 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c 5242880
  - name: tail
    needs: [big]
    steps:
      - printf 'first\n'
      - printf 'no newline at the end'
"""

EXPECTED_BYTES = {
    "prepare": b"caf\xe9 \xff\xfe raw bytes\r\n"
    b"windows line\r\nunix line\n"
    b"out1\nerr1\nout2\n"
    b"hello cifleet job-env\n",
    "big": (BIG_LINE * (BIG_SIZE // len(BIG_LINE) + 1))[:BIG_SIZE],
    "tail": b"first\nno newline at the end",
}

FAILING_PIPELINE = """
name: breaks
jobs:
  - name: compile
    steps: ["echo compiling", "echo broken >&2; exit 3", "echo never printed"]
  - name: unit
    needs: [compile]
    steps: ["echo must not run"]
  - name: lint
    steps: ["echo lint ok"]
"""


def test_two_agents_run_pipelines_with_exact_logs_and_states(primary, start_agent):
    start_agent("agent-a")
    start_agent("agent-b")
    primary.pipeline(BYTES_PIPELINE)
    primary.pipeline(FAILING_PIPELINE)
    good = primary.trigger("bytes")
    bad = primary.trigger("breaks")

    good_run = primary.wait_run(good, timeout=120)
    bad_run = primary.wait_run(bad, timeout=60)

    # One slot each: the second run had to go to the other worker.
    assert {good_run["worker_name"], bad_run["worker_name"]} == {"agent-a", "agent-b"}

    assert good_run["state"] == "success"
    assert [(j["name"], j["state"], j["exit_code"]) for j in good_run["jobs"]] == [
        ("prepare", "success", 0),
        ("big", "success", 0),
        ("tail", "success", 0),
    ]
    for job, expected in EXPECTED_BYTES.items():
        stored = primary.job_log(good, job)
        assert len(stored) == len(expected), job
        assert stored == expected, job

    assert bad_run["state"] == "failed"
    assert [(j["name"], j["state"], j["exit_code"]) for j in bad_run["jobs"]] == [
        ("compile", "failed", 3),
        ("unit", "skipped", None),
        ("lint", "success", 0),
    ]
    assert primary.job_log(bad, "compile") == b"compiling\nbroken\n"
    assert primary.job_log(bad, "unit") == b""
    assert primary.job_log(bad, "lint") == b"lint ok\n"


def test_run_log_has_sections_and_offsets_resume(primary, start_agent):
    start_agent("agent-a")
    primary.pipeline(FAILING_PIPELINE)
    run_id = primary.trigger("breaks")
    primary.wait_run(run_id)
    status, headers, whole = primary.client.request("GET", f"/api/v1/runs/{run_id}/log")
    assert status == 200 and headers["x-log-complete"] == "true"
    assert whole.startswith(b"=== Prepare environment (attempt 1)\n")
    assert b"chosen: agent-a (first run)" in whole
    assert (
        b"=== job compile\ncompiling\nbroken\n=== job compile: failed, exit code 3\n"
        b"=== job unit: skipped\n"
        b"=== job lint\nlint ok\n=== job lint: success, exit code 0\n"
        b"=== run %d: failed\n" % run_id
    ) in whole
    # Reading from an offset returns exactly the rest.
    _, _, rest = primary.client.request("GET", f"/api/v1/runs/{run_id}/log?offset=25")
    assert rest == whole[25:]


def test_log_arrives_while_the_job_is_still_running(primary, start_agent, fleet_root):
    start_agent("agent-a")
    go_on = fleet_root / "go-on"  # the job waits for it: it surely still runs below
    primary.pipeline(f"""
name: slow
jobs:
  - name: wait
    steps: ["echo first; {wait_file_step(go_on)}; echo second"]
""")
    run_id = primary.trigger("slow")
    wait_for(lambda: primary.job_log(run_id, "wait") == b"first\n", 30, "the first line")
    run = primary.run(run_id)
    assert run["state"] == "running" and run["jobs"][0]["state"] == "running"
    go_on.touch()
    done = primary.wait_run(run_id, timeout=30)
    assert done["state"] == "success"
    assert primary.job_log(run_id, "wait") == b"first\nsecond\n"
    # An offset read returns the rest only.
    assert primary.job_log(run_id, "wait", offset=6) == b"second\n"


def test_primary_restart_mid_run_loses_nothing(primary, start_agent):
    # Agents stop their jobs after half the heartbeat timeout without the primary (they
    # fence, agent/fence.py): a timeout long enough that the restart stays well within it.
    primary.stop()
    primary.serve_args += ["--heartbeat-timeout", "24"]
    primary.start()
    agent = start_agent("agent-a")
    primary.pipeline("""
name: steady
jobs:
  - name: count
    steps: ['for i in $(seq 1 40); do echo "line $i"; sleep 0.2; done']
""")
    run_id = primary.trigger("steady")
    wait_for(lambda: b"line 5\n" in primary.job_log(run_id, "count"), 30, "line 5")
    primary.stop()
    # The agent keeps running the job and spools its output meanwhile.
    spool = agent.home / "spool" / f"{run_id}-1" / "count.log"
    wait_for(lambda: b"line 10\n" in spool.read_bytes(), 30, "the job to go on without it")
    primary.start()
    run = primary.wait_run(run_id, timeout=60)
    assert run["state"] == "success"
    assert run["attempt"] == 1  # the same attempt finished: it was never lost
    expected = b"".join(b"line %d\n" % i for i in range(1, 41))
    assert primary.job_log(run_id, "count") == expected
    assert "no contact with the primary" not in agent.log_path.read_text()


def test_invalid_pipeline_is_refused_and_nothing_is_stored(primary):
    from primary.cli.client import ApiFailure

    cases = [
        # An unclosed list: YAML notices at the end of the stream, on line 5.
        ('name: x\njobs:\n  - name: a\n    steps: ["echo"\n', "yaml", 5),
        ("name: x\njobs:\n  - name: a\n    steps: []\n", "jobs[0].steps", 4),
        ("name: x\njobs:\n  - name: a\n    steps: [echo]\n    needs: [b]\n", "jobs[0].needs", 5),
        ("name: 'bad name'\njobs:\n  - name: a\n    steps: [echo]\n", "name", 1),
        ("name: x\njobs:\n  - name: a\n    stepz: [echo]\n", "jobs[0].stepz", 4),
    ]
    for text, field, line in cases:
        try:
            primary.pipeline(text)
        except ApiFailure as exc:
            assert exc.status == 400
            assert exc.body["field"] == field, exc.body
            assert exc.body["line"] == line, exc.body
            assert exc.body["error"].startswith(field)
        else:
            raise AssertionError(f"accepted: {text!r}")
    assert primary.client.json("GET", "/api/v1/pipelines")["pipelines"] == []
