"""Retention (issue 20): a real primary and agent, a policy, and the janitor's pass.

Time moves by setting the runs' timestamps in the store (never by waiting): a run aged by
100 days is outside a 30-day policy. Passes are forced (POST /api/v1/retention/prune), so
nothing depends on the janitor's interval."""

import http.client
import json
import re
import ssl
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import psycopg
import pytest
from fleet import (
    BIN,
    Agent,
    Primary,
    kill_workspace_processes,
    register_agent,
    wait_file_step,
    wait_for,
)
from pgcluster import both_engines

from primary.store.datadir import DataDir
from primary.store.engines import open_store

DAY = 86_400.0
ECHO = """
name: {name}
{extra}
jobs:
  - name: say
    steps: ["echo hello from {name}"]
"""


def store_of(primary: Primary):
    return open_store(DataDir(primary.data_dir).store_location())


def age(primary: Primary, run_ids: list[int], days: float) -> None:
    """Make these runs `days` older: created, queued and finished that much earlier."""
    store = store_of(primary)
    try:
        with store.transaction() as conn:
            for run_id in run_ids:
                conn.execute(
                    "UPDATE runs SET created_at = created_at - ?, queued_at = queued_at - ?,"
                    " finished_at = finished_at - ? WHERE id = ?",
                    (days * DAY, days * DAY, days * DAY, run_id),
                )
    finally:
        store.close()


def rows_of(primary: Primary, sql: str, params: tuple = ()) -> list[dict]:
    store = store_of(primary)
    try:
        return [dict(r) for r in store.query(sql, params)]
    finally:
        store.close()


def call(primary: Primary, method: str, path: str, body: dict | None = None):
    raw = json.dumps(body).encode() if body is not None else None
    status, _, answer = primary.client.request(method, path, raw)
    return status, json.loads(answer) if answer.startswith(b"{") else answer


def prune(primary: Primary, dry_run: bool = False) -> dict:
    status, body = call(primary, "POST", f"/api/v1/retention/prune?dry_run={str(dry_run).lower()}")
    assert status == 200, body
    return body


def metric(primary: Primary, name: str) -> float:
    status, _, body = primary.client.request("GET", "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def finished_runs(primary: Primary, name: str, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        run_id = primary.trigger(name)
        assert primary.wait_run(run_id)["state"] == "success"
        ids.append(run_id)
    return ids


@both_engines
def test_old_runs_are_pruned_newest_and_unfinished_kept_and_logs_say_410(
    primary, start_agent, tmp_path
):
    start_agent("keeper", slots=1)
    primary.pipeline(ECHO.format(name="echo", extra=""))
    go = tmp_path / "go"
    primary.pipeline(
        f"name: hold\njobs:\n  - name: wait\n    steps:\n      - {json.dumps(wait_file_step(go))}\n"
    )
    primary.pipeline(ECHO.format(name="nowhere", extra="tags: [no-such-tag]"))
    echo_runs = finished_runs(primary, "echo", 4)
    old, newest = echo_runs[:3], echo_runs[3]
    log_bytes = sum(primary.run(r)["jobs"][0]["log_size"] for r in old)
    assert log_bytes == 3 * len(b"hello from echo\n")
    running = primary.trigger("hold")
    wait_for(lambda: primary.run(running)["state"] == "running", 60, "the hold run to run")
    queued = [primary.trigger("hold"), primary.trigger("nowhere"), primary.trigger("nowhere")]
    age(primary, [*echo_runs, running, *queued], days=100)

    status, body = call(primary, "PUT", "/api/v1/retention", {"days": 30})
    assert (status, body) == (200, {"policy": {"days": 30}})
    plan = prune(primary, dry_run=True)["would_prune"]
    assert plan == [
        {"pipeline": "echo", "keep": {"days": 30}, "runs": 3, "first": old[0], "last": old[-1]}
    ]
    assert primary.run(old[0])["state"] == "success"  # a dry run deletes nothing

    pruned = prune(primary)["pruned"]
    assert (pruned["runs"], pruned["attempts"], pruned["log_bytes"]) == (3, 3, log_bytes)
    assert metric(primary, "cifleet_retention_deleted_runs_total") == 3
    assert metric(primary, "cifleet_retention_deleted_attempts_total") == 3
    assert metric(primary, "cifleet_retention_deleted_log_bytes_total") == log_bytes

    # Running and queued runs stay, older than the horizon as they are; so does the newest.
    assert primary.run(running)["state"] == "running"
    assert [primary.run(r)["state"] for r in queued] == ["queued"] * 3
    assert primary.job_log(newest, "say") == b"hello from echo\n"
    # The pruned ones: 410 with the date, on the run, its job log, its run log and run again.
    today = rows_of(primary, "SELECT pruned_at FROM pruned_runs WHERE run_id = ?", (old[0],))
    assert len(today) == 1
    for path in (
        f"/api/v1/runs/{old[0]}",
        f"/api/v1/runs/{old[0]}/jobs/say/log",
        f"/api/v1/runs/{old[0]}/attempts/1/jobs/say/log",
        f"/api/v1/runs/{old[0]}/log",
        f"/api/v1/runs/{old[0]}/artifacts",
        f"/api/v1/runs/{old[0]}/jobs/say/artifacts.tar",
    ):
        status, body = call(primary, "GET", path)
        assert status == 410, (path, body)
        assert body["code"] == "pruned" and body["pipeline"] == "echo"
        assert (
            f"run {old[0]} of pipeline echo: log pruned on {body['pruned_at'][:10]}"
            in (body["error"])
        )
    status, body = call(primary, "POST", f"/api/v1/runs/{old[1]}/again")
    assert status == 410, body
    assert call(primary, "GET", "/api/v1/runs/999999")[0] == 404  # never was: 404
    listed = [r["id"] for r in primary.client.json("GET", "/api/v1/runs?pipeline=echo")["runs"]]
    assert listed == [newest]
    # Their rows and log bytes are gone from the store (and from the data dir's files).
    marks = ",".join("?" * len(old))
    for table in ("runs", "attempts", "jobs"):
        key = "id" if table == "runs" else "run_id"
        sql = f"SELECT COUNT(*) AS n FROM {table} WHERE {key} IN ({marks})"
        assert rows_of(primary, sql, tuple(old)) == [{"n": 0}], table
    for table in ("job_logs", "log_chunks"):
        sql = f"SELECT COUNT(*) AS n FROM {table} WHERE run_id IN ({marks})"
        assert rows_of(primary, sql, tuple(old)) == [{"n": 0}], table
    logs = primary.data_dir / "logs"
    assert not any((logs / str(r)).exists() for r in old)
    # A second pass finds nothing more.
    assert prune(primary)["pruned"]["runs"] == 0
    go.touch()
    assert primary.wait_run(running)["state"] == "success"


LOGIN_PASSWORD = "ada-password-0123"


def ui_get(primary: Primary, path: str) -> tuple[int, str]:
    """A page of the web UI as a logged-in admin, without a browser."""
    made = subprocess.run(
        [str(BIN / "cifleet-primary"), "user", "create", "ada", "--role", "admin"]
        + ["--data-dir", str(primary.data_dir)],
        input=LOGIN_PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    context = ssl.create_default_context(cafile=str(primary.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", primary.api_port, context=context, timeout=60)
    try:
        conn.request("GET", "/login")  # the session's CSRF token, in its cookie and form
        response = conn.getresponse()
        cookie = response.getheader("Set-Cookie").split(";")[0]
        token = re.search(r'name="csrf_token" value="([^"]+)"', response.read().decode())[1]
        form = {"name": "ada", "password": LOGIN_PASSWORD, "next": "/", "csrf_token": token}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        conn.request("POST", "/login", urllib.parse.urlencode(form), headers)
        response = conn.getresponse()
        response.read()
        assert response.status == 303
        cookie = response.getheader("Set-Cookie").split(";")[0]
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_per_pipeline_keep_overrides_the_default_and_bad_policies_are_refused(primary, start_agent):
    start_agent("keeper", slots=1)
    refused = primary.client.request(
        "POST",
        "/api/v1/pipelines",
        ECHO.format(name="bad", extra="keep: {runs: 0}").encode(),
        "application/yaml",
    )
    assert refused[0] == 400
    assert json.loads(refused[2])["error"] == (
        "keep.runs: must be a whole number from 1 to 1000000 (line 3)"
    )
    for bad, message in (
        ({"days": "30"}, "days: must be a whole number from 1 to 36500"),
        (
            {"runs": 1, "weeks": 2},
            "weeks: unknown field; expected one of days, runs, workspace_days",
        ),
        ({"workspace_days": 0}, "workspace_days: must be a whole number from 1 to 36500"),
    ):
        status, body = call(primary, "PUT", "/api/v1/retention", bad)
        assert (status, body["error"]) == (400, message)
    assert call(primary, "GET", "/api/v1/retention") == (200, {"policy": {}})  # nothing stored
    # Everything is kept while no policy is set.
    primary.pipeline(ECHO.format(name="default", extra=""))
    primary.pipeline(ECHO.format(name="two", extra="keep: {runs: 2}"))
    primary.pipeline(ECHO.format(name="all", extra="keep: {}"))
    runs = {name: finished_runs(primary, name, 3) for name in ("default", "two", "all")}
    # With no fleet policy, only the pipeline that says how many to keep is pruned.
    assert prune(primary)["pruned"]["runs"] == 1
    d, t = runs["default"], runs["two"]
    status, body = call(primary, "GET", f"/api/v1/runs/{t[0]}")
    assert status == 410, body

    cli = [str(BIN / "cifleet-primary"), "retention", "set", "--runs", "1"]
    done = subprocess.run(
        [*cli, "--data-dir", str(primary.data_dir)], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, '{"runs": 1}\n'), done.stderr
    dry = subprocess.run(
        [str(BIN / "cifleet-primary"), "prune", "--dry-run", "--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry.stdout == (
        f"default: 2 run(s), ids {d[0]}..{d[1]} (keep runs=1)\n"
        "would prune 2 run(s); nothing was deleted\n"
    ), dry.stderr
    done = subprocess.run(
        [str(BIN / "cifleet-primary"), "prune", "--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pruned 2 run(s), 2 attempt(s), ")
    kept = {
        name: [r["id"] for r in primary.client.json("GET", f"/api/v1/runs?pipeline={name}")["runs"]]
        for name in runs
    }
    assert kept == {"default": [d[2]], "two": [t[2], t[1]], "all": runs["all"][::-1]}
    # The UI's run page of a pruned run says so, with the date, instead of an empty log.
    status, page = ui_get(primary, f"/runs/{d[0]}")
    pruned_at = call(primary, "GET", f"/api/v1/runs/{d[0]}")[1]["pruned_at"]
    assert status == 410
    assert f"run {d[0]} of pipeline default: log pruned on {pruned_at[:10]}" in page


def test_janitor_runs_once_with_two_primaries_on_one_postgresql(tmp_path, pg_url):
    first, second = tmp_path / "one", tmp_path / "two"
    init = [str(BIN / "cifleet-primary"), "init", "--data-dir"]
    done = subprocess.run([*init, str(first), "--store", pg_url], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    key = str(first / "vault.key")
    done = subprocess.run(
        [*init, str(second), "--store", pg_url, "--vault-key-file", key, "--name", "second"],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    primaries = [
        Primary(
            data_dir=d,
            serve_args=["--builtin-work-dir", str(tmp_path / f"work-{d.name}")],
            log_path=tmp_path / f"{d.name}.log",
        )
        for d in (first, second)
    ]
    try:
        for p in primaries:
            p.start()
        one, two = primaries
        one.pipeline(ECHO.format(name="echo", extra=""))
        ids = finished_runs(one, "echo", 8)
        age(one, ids, days=100)
        assert call(two, "PUT", "/api/v1/retention", {"days": 1})[0] == 200
        answers: list = [None, None]

        def pass_on(i: int) -> None:
            answers[i] = call(primaries[i], "POST", "/api/v1/retention/prune")

        threads = [threading.Thread(target=pass_on, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        statuses = sorted(a[0] for a in answers)
        assert statuses in ([200, 200], [200, 409]), answers
        by_report = sum(a[1]["pruned"]["runs"] for a in answers if a[0] == 200)
        busy = [a[1] for a in answers if a[0] == 409]
        assert all(b["code"] == "janitor_busy" for b in busy), busy
        counted = sum(metric(p, "cifleet_retention_deleted_runs_total") for p in primaries)
        assert by_report == counted == 7  # the newest run is kept
        tombstones = rows_of(one, "SELECT COUNT(*) AS n FROM pruned_runs")
        assert tombstones == [{"n": 7}]
        assert [r["id"] for r in one.client.json("GET", "/api/v1/runs")["runs"]] == [ids[-1]]
        for p in primaries:
            text = Path(p.log_path).read_text()
            assert "Traceback" not in text and "retention pass failed" not in text, text
    finally:
        for p in primaries:
            p.close()


def test_a_stale_workspace_is_deleted_on_its_worker_and_its_home_forgotten(
    primary, start_agent, fleet_root
):
    agent = start_agent("keeper", slots=1)
    primary.pipeline(ECHO.format(name="cached", extra=""))
    primary.pipeline(ECHO.format(name="fresh", extra=""))
    cached = finished_runs(primary, "cached", 1)
    finished_runs(primary, "fresh", 1)
    workspaces = agent.home / "workspaces"
    assert (workspaces / "cached").is_dir() and (workspaces / "fresh").is_dir()
    worker_id = primary.worker("keeper")["id"]
    home = primary.client.json("GET", "/api/v1/pipelines/cached")["home_worker_id"]
    assert home == worker_id
    age(primary, cached, days=10)
    assert call(primary, "PUT", "/api/v1/retention", {"workspace_days": 7})[0] == 200
    dry = prune(primary, dry_run=True)
    assert (dry["would_prune"], dry["would_forget_homes"]) == ([], ["cached"])
    assert (workspaces / "cached").is_dir()  # a dry run changes nothing

    pruned = prune(primary)["pruned"]
    assert (pruned["runs"], pruned["homes_forgotten"]) == (0, ["cached"])
    assert primary.client.json("GET", "/api/v1/pipelines/cached")["home_worker_id"] is None
    assert primary.client.json("GET", "/api/v1/pipelines/fresh")["home_worker_id"] == worker_id
    wait_for(lambda: not (workspaces / "cached").exists(), 30, "the stale workspace to go")
    assert (workspaces / "fresh").is_dir()  # used within the week: kept
    # Its next run is placed as on a first run, from an empty workspace.
    again = primary.trigger("cached")
    assert primary.wait_run(again)["state"] == "success"
    assert any("cache cleared" in line for line in primary.run(again)["placement"]), primary.run(
        again
    )["placement"]


BLOB = """
name: {name}
jobs:
  - name: fill
    steps: ["head -c 409600 /dev/urandom > blob"]
"""


def test_the_workspace_cap_removes_the_least_recently_used_and_its_home_is_forgotten(
    primary, fleet_root
):
    done = register_agent(primary, fleet_root, "capped", "", 1)
    assert done.returncode == 0, done.stderr
    agent = Agent(
        name="capped",
        home=fleet_root / "capped",
        log_path=fleet_root / "capped.log",
        args=["--workspace-max-bytes", "1M"],  # two workspaces of 400 KiB fit, three do not
    )
    agent.start()
    try:
        wait_for(lambda: (w := primary.worker("capped")) and w["state"] == "active", 30, "agent")
        worker_id = primary.worker("capped")["id"]
        for name in ("first", "second", "third"):
            primary.pipeline(BLOB.format(name=name))
            assert primary.wait_run(primary.trigger(name))["state"] == "success"
        workspaces = agent.home / "workspaces"

        def home_of(name: str) -> str | None:
            return primary.client.json("GET", f"/api/v1/pipelines/{name}")["home_worker_id"]

        wait_for(lambda: home_of("first") is None, 30, "the evicted workspace's home to go")
        assert not (workspaces / "first").exists()
        assert (workspaces / "second" / "blob").stat().st_size == 409600
        assert (workspaces / "third" / "blob").stat().st_size == 409600
        assert (home_of("second"), home_of("third")) == (worker_id, worker_id)
        assert "deleted workspace first (" in agent.log_path.read_text()
        # Its next run is placed as after a cleared cache, from an empty workspace; the
        # second is now the least recently used and goes.
        again = primary.trigger("first")
        assert primary.wait_run(again)["state"] == "success"
        assert any("cache cleared" in line for line in primary.run(again)["placement"])
        wait_for(lambda: home_of("second") is None, 30, "the next eviction's home to go")
        assert not (workspaces / "second").exists()
        assert (workspaces / "first" / "blob").exists() and (workspaces / "third").exists()
    finally:
        agent.stop()
        kill_workspace_processes(agent.home)


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
def test_dispatch_goes_on_while_a_prune_batch_is_open(primary, start_agent, store_url):
    """A batch's transaction holds row locks on its own runs only: with one held open (it
    waits on a tombstone this test inserted and has not committed), a new run is placed,
    runs and finishes. Counted, not timed: one batch committed, the next open, one run done
    meanwhile; then the pass completes and counts every run once."""
    start_agent("keeper", slots=1)
    primary.pipeline(ECHO.format(name="fresh", extra=""))
    old = seed_finished_runs(primary, "old", 120)
    assert call(primary, "PUT", "/api/v1/retention", {"runs": 1})[0] == 200
    blocker = psycopg.connect(store_url, autocommit=True)
    try:
        blocker.execute("BEGIN")
        # The first run of the second batch (the oldest 50 go first, the newest stays).
        blocker.execute(
            "INSERT INTO pruned_runs (run_id, pipeline, pruned_at) VALUES (%s, 'old', 0)",
            (old[50],),
        )
        answer: list = []
        pruner = threading.Thread(
            target=lambda: answer.append(call(primary, "POST", "/api/v1/retention/prune"))
        )
        pruner.start()
        count = "SELECT COUNT(*) AS n FROM pruned_runs"
        wait_for(lambda: rows_of(primary, count) == [{"n": 50}], 60, "the first batch")
        waiting = (
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO pruned_runs%'"
        )
        wait_for(lambda: rows_of(primary, waiting)[0]["n"] >= 1, 60, "the second batch to wait")
        run_id = primary.trigger("fresh")
        assert primary.wait_run(run_id)["state"] == "success"
        assert primary.job_log(run_id, "say") == b"hello from fresh\n"
        assert rows_of(primary, count) == [{"n": 50}] and not answer  # still mid-pass
        blocker.execute("ROLLBACK")
        pruner.join(60)
        status, body = answer[0]
        assert status == 200 and body["pruned"]["runs"] == 119, body
        assert metric(primary, "cifleet_retention_deleted_runs_total") == 119
        assert rows_of(primary, count) == [{"n": 119}]
    finally:
        blocker.close()


def seed_finished_runs(primary: Primary, pipeline: str, count: int) -> list[int]:
    """Finished runs of a pipeline, a year old, each with a job and an attempt, written in
    the store as the primary writes them (faster than running them)."""
    store = store_of(primary)
    long_ago = time.time() - 365 * DAY
    spec = json.dumps({"name": pipeline, "tags": [], "env": {}, "retries_on_lost": 1, "jobs": []})
    try:
        with store.transaction() as conn:
            ids = [
                conn.execute(
                    "INSERT INTO runs (pipeline, spec, tags, state, attempt, worker_id,"
                    " worker_name, created_at, queued_at, finished_at)"
                    " VALUES (?, ?, '[]', 'success', 1, 'w', 'w', ?, ?, ?) RETURNING id",
                    (pipeline, spec, long_ago, long_ago, long_ago),
                ).fetchone()["id"]
                for _ in range(count)
            ]
            for run_id in ids:
                conn.execute(
                    "INSERT INTO jobs (run_id, name, position, state, exit_code)"
                    " VALUES (?, 'j', 0, 'success', 0)",
                    (run_id,),
                )
                conn.execute(
                    "INSERT INTO attempts (run_id, attempt, worker_id, worker_name,"
                    " assigned_at, ended_at, outcome) VALUES (?, 1, 'w', 'w', ?, ?, 'success')",
                    (run_id, long_ago, long_ago),
                )
    finally:
        store.close()
    return ids
