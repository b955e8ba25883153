"""Several primaries on one PostgreSQL: an agent knows them all, and when the one it talks
to dies it moves to another within seconds, with the same certificate. Its fence counts
contact with any primary, so the job it runs goes on: no stop, no second attempt, and the
log (chunks in flight at the kill resent to the other primary by offset) byte-exact."""

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from fleet import BIN, Agent, Primary, register_agent, shared_file, wait_file_step, wait_for

HEARTBEAT = 6.0  # the agent fences after 3 s without a lease renewal


def init(data_dir: Path, *args: str) -> None:
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def two_primaries(tmp_path, pg_url):
    first, second = tmp_path / "one", tmp_path / "two"
    init(first, "--store", pg_url)
    init(second, "--store", pg_url, "--vault-key-file", str(first / "vault.key"))
    primaries = [
        Primary(
            data_dir=d,
            serve_args=["--heartbeat-timeout", str(HEARTBEAT), "--primary-worker-slots", "0"],
            log_path=tmp_path / f"{d.name}.log",
        )
        for d in (first, second)
    ]
    try:
        for p in primaries:
            p.start()
        yield primaries
    finally:
        for p in primaries:
            p.close()


@pytest.fixture
def mover(two_primaries, tmp_path):
    one, _ = two_primaries
    assert register_agent(one, tmp_path, "mover").returncode == 0
    agent = Agent(name="mover", home=tmp_path / "mover", log_path=tmp_path / "mover.log")
    agent.start()
    yield agent
    agent.stop()


def last_contact(pg_cluster, pg_url: str) -> float:
    [(seen,)] = pg_cluster.sql(pg_url, "SELECT last_contact FROM workers WHERE name = 'mover'")
    return seen or 0.0


def test_the_agent_moves_to_another_primary_and_its_job_goes_on(
    two_primaries, mover, tmp_path, pg_cluster, pg_url
):
    one, two = two_primaries
    assert mover.config()["agent_url"] == f"https://127.0.0.1:{one.agent_port}"
    # The primaries tell the agent where they all are; it keeps the list for a restart.
    wait_for(
        lambda: f"https://127.0.0.1:{two.agent_port}" in mover.config().get("agent_urls", []),
        30,
        "the agent to learn of the second primary",
    )
    go = tmp_path / "go"
    out = shared_file(tmp_path / "out.txt")
    # Output all along (so chunks are in flight when the primary dies), a copy in out.txt.
    one.pipeline(f"""
name: long
jobs:
  - name: w
    steps:
      - 'i=0; while [ ! -e {go} ] && [ $i -lt 20000 ]; do seq $((i*100)) $((i*100+99));
         i=$((i+1)); sleep 0.01; done | tee {out}'
      - '{wait_file_step(go)}; echo done'
""")
    run_id = one.trigger("long")
    wait_for(lambda: one.run(run_id)["state"] == "running", 30, "the run to start")
    wait_for(lambda: len(one.job_log(run_id, "w")) > 50_000, 30, "output to arrive")

    one.stop(signal.SIGKILL)
    killed = time.time()
    # Heard through the second primary for a whole heartbeat timeout after the kill: twice
    # as long as the fence would have allowed without contact.
    wait_for(
        lambda: last_contact(pg_cluster, pg_url) > killed + HEARTBEAT,
        30,
        "the agent to poll the second primary for a heartbeat timeout",
    )
    go.touch()
    run = two.wait_run(run_id, timeout=60)
    assert (run["state"], run["attempt"]) == ("success", 1), run
    expected = out.read_bytes()
    assert len(expected) > 50_000
    assert two.job_log(run_id, "w") == expected + b"done\n"
    log = mover.log_path.read_text()
    assert f"cannot reach the primary at https://127.0.0.1:{one.agent_port}; moving to" in log
    assert "stopping runs" not in log, log  # never fenced
    assert "undelivered output" not in log


def test_a_restarted_agent_knows_the_primaries_and_starts_where_one_is(
    two_primaries, mover, tmp_path
):
    one, two = two_primaries
    wait_for(
        lambda: f"https://127.0.0.1:{two.agent_port}" in mover.config().get("agent_urls", []),
        30,
        "the agent to learn of the second primary",
    )
    mover.stop()
    one.stop(signal.SIGKILL)
    mover.start()  # its registered primary is dead: it moves to the one it learned of
    two.pipeline("name: quick\njobs:\n  - name: w\n    steps: ['echo hi']\n")
    run_id = two.trigger("quick")
    run = two.wait_run(run_id, timeout=60)
    assert run["state"] == "success" and two.job_log(run_id, "w") == b"hi\n"
    config = json.loads((mover.home / "config.json").read_text())
    assert config["agent_url"] == f"https://127.0.0.1:{one.agent_port}"  # as registered


def test_bad_primaries_are_refused_by_the_cli(tmp_path):
    result = subprocess.run(
        [str(BIN / "cifleet-agent"), "run", "--home", str(tmp_path), "--primaries", "http://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--primaries: not an https://HOST[:PORT] URL: http://x:1" in result.stderr
