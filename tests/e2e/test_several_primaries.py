"""Several primaries on one PostgreSQL. An agent knows them all, and when the one it talks
to dies it moves to another within seconds, with the same certificate. Its fence counts
contact with any primary, so the job it runs goes on: no stop, no second attempt, and the
log (chunks in flight at the kill resent to the other primary by offset) byte-exact. A run
queued through one wakes an agent held by the other; static files uploaded through one
are served by every one."""

import hashlib
import json
import signal
import subprocess
import time

import pytest
from fleet import (
    BIN,
    HEARTBEAT,
    Agent,
    Primary,
    register_agent,
    shared_file,
    wait_file_step,
    wait_for,
)


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
    # `check` (the role's registration test) asks the primary it learned of, too.
    checked = subprocess.run(
        [str(BIN / "cifleet-agent"), "check", "--home", str(mover.home)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    mover.start()  # its registered primary is dead: it moves to the one it learned of
    two.pipeline("name: quick\njobs:\n  - name: w\n    steps: ['echo hi']\n")
    run_id = two.trigger("quick")
    run = two.wait_run(run_id, timeout=60)
    assert run["state"] == "success" and two.job_log(run_id, "w") == b"hi\n"
    config = json.loads((mover.home / "config.json").read_text())
    assert config["agent_url"] == f"https://127.0.0.1:{one.agent_port}"  # as registered


def polls_held(primary: Primary) -> float:
    status, _, body = primary.client.request("GET", "/metrics")
    assert status == 200
    [line] = [x for x in body.decode().splitlines() if x.startswith("cifleet_polls_held ")]
    return float(line.split()[1])


# Polls held 120 s, assignments unconfirmed for 120 s before they are taken back: only the
# other primary's notification can hand the agent its run before its poll's hold ends.
@pytest.mark.parametrize(
    "two_primaries",
    [("--heartbeat-timeout", "120", "--confirm-timeout", "120")],
    indirect=True,
)
def test_a_run_queued_through_one_primary_wakes_an_agent_held_by_the_other(two_primaries, mover):
    one, two = two_primaries
    wait_for(lambda: polls_held(one) == 1, 30, "the agent's poll to be held by the first")
    two.pipeline("name: across\njobs:\n  - name: w\n    steps: ['echo across']\n")
    run_id = two.trigger("across")
    # Well within the hold (120 s), which is what it would take without the notification.
    run = two.wait_run(run_id, timeout=20)
    assert (run["state"], run["attempt"]) == ("success", 1), run
    assert one.job_log(run_id, "w") == b"across\n"


def test_static_files_uploaded_through_one_primary_are_served_by_the_other(
    two_primaries, mover, pg_cluster, pg_url
):
    one, two = two_primaries
    two.pipeline("name: files\njobs:\n  - name: w\n    steps: ['sha256sum conf/data']\n")
    data = bytes(range(256)) * 9000  # 2.3 MB: three chunks
    path = "/api/v1/pipelines/files/files/conf/data"
    status, _, _ = two.client.request("PUT", path, data)
    assert status in (200, 201)
    assert one.client.request("GET", path)[::2] == (200, data)
    # A file cannot be a folder of others, nor under another file: as on disk.
    for bad, why in (
        ("conf", "conf is a folder of other files"),
        ("conf/data/x", "conf/data is a file, so nothing can be below it"),
    ):
        status, _, body = one.client.request("PUT", f"/api/v1/pipelines/files/files/{bad}", b"x")
        assert status == 400 and why.encode() in body, body
    run_id = two.trigger("files")
    assert one.wait_run(run_id)["state"] == "success"
    digest = hashlib.sha256(data).hexdigest()
    assert one.job_log(run_id, "w") == f"{digest}  conf/data\n".encode()
    # Replaced and deleted through one primary: the old chunks go with it.
    assert one.client.request("PUT", path, b"new")[0] in (200, 201)
    assert two.client.request("GET", path)[::2] == (200, b"new")
    assert pg_cluster.sql(pg_url, "SELECT count(*) FROM file_chunks") == [(1,)]
    assert two.client.request("DELETE", path)[0] in (200, 204)
    assert one.client.request("GET", path)[0] == 404
    assert pg_cluster.sql(pg_url, "SELECT count(*) FROM file_chunks") == [(0,)]
    assert not (one.data_dir / "files").exists() and not (two.data_dir / "files").exists()


def test_bad_primaries_are_refused_by_the_cli(tmp_path):
    result = subprocess.run(
        [str(BIN / "cifleet-agent"), "run", "--home", str(tmp_path), "--primaries", "http://x:1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "--primaries: not an https://HOST[:PORT] URL: http://x:1" in result.stderr


def test_a_primary_that_joins_wakes_the_polls_held_by_the_others(two_primaries, tmp_path):
    """An idle poll is held for two minutes; its agent learns of a primary that joins
    (where it would fail over to) at that primary's first beat, not when the hold ends."""
    one, two = two_primaries
    two.stop()
    assert register_agent(one, tmp_path, "idler").returncode == 0
    agent = Agent(name="idler", home=tmp_path / "idler", log_path=tmp_path / "idler.log")
    agent.start()
    try:
        url_one, url_two = (f"https://127.0.0.1:{p.agent_port}" for p in (one, two))
        wait_for(
            lambda: polls_held(one) == 1 and agent.config().get("agent_urls") == [url_one],
            30,
            "an idle poll held, its agent knowing only the first primary",
        )
        time.sleep(1)  # the hold is a long one by now (the short one is half of HEARTBEAT)
        joined = time.monotonic()
        two.start()
        wait_for(
            lambda: url_two in agent.config().get("agent_urls", []),
            30,
            "the agent to learn of the second primary",
        )
        assert time.monotonic() - joined < 30  # not the 300 s the hold would have lasted
    finally:
        agent.stop()
