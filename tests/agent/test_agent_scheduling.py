"""The agent's side of scheduling against the fake primary over real mutual TLS: workspaces
in polls, deleting them, clean_workspace, static files, prepare notes, adopting slots."""

import hashlib
import json
import threading

from fleet import wait_file_step

from agent.worker import Agent

CLEANED = "workspace: cleaned (first run of this pipeline on this worker as its home)"


def run(run_id, *steps, pipeline="p", files=None, clean=False, attempt=1):
    """An assignment with one job per step, named a, b, c, ..."""
    return {
        "run_id": run_id,
        "attempt": attempt,
        "pipeline": pipeline,
        "env": {},
        "clean_workspace": clean,
        "files": files or [],
        "jobs": [
            {"name": chr(ord("a") + i), "steps": [s], "timeout": 60, "needs": []}
            for i, s in enumerate(steps)
        ],
    }


def spec(path, data):
    return {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def prepare_lines(fake, run_id):
    return [line for body in fake.prepares.get(run_id, []) for line in body["lines"]]


def fetched(fake, run_id):
    return sorted(path for r, _, path in fake.file_requests if r == run_id)


def test_polls_report_the_workspaces(agent_home, fake_primary, running_agent):
    for name in ("beta", "alpha"):
        (agent_home / "workspaces" / name).mkdir(parents=True)
    (agent_home / "workspaces" / "not-a-dir").write_text("x")
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.polls)
    assert fake_primary.polls[0]["workspaces"] == ["alpha", "beta"]


def test_delete_workspaces_waits_until_no_run_uses_it(agent_home, fake_primary, running_agent):
    ws = agent_home / "workspaces"
    (ws / "idle").mkdir(parents=True)
    (agent_home / "files").mkdir()
    (agent_home / "files" / "idle.json").write_text("{}")
    (agent_home / "files" / "busy.json").write_text("{}")
    # The run of "busy" waits for a file the test creates, so it is surely running below.
    fake_primary.assignments.append(
        run(1, "touch started; while [ ! -f go ]; do sleep 0.05; done; echo done", pipeline="busy")
    )
    running_agent()
    fake_primary.wait_for(lambda: (ws / "busy" / "started").exists())
    fake_primary.not_home = {"busy", "idle"}
    fake_primary.wait_for(lambda: not (ws / "idle").exists())
    assert not (agent_home / "files" / "idle.json").exists()
    polls = len(fake_primary.polls)
    fake_primary.wait_for(lambda: len(fake_primary.polls) >= polls + 2)
    assert (ws / "busy" / "started").exists()  # in use: kept
    assert (agent_home / "files" / "busy.json").exists()
    (ws / "busy" / "go").touch()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.log(1, "a") == b"done\n"
    fake_primary.wait_for(lambda: not (ws / "busy").exists())  # deleted once the run ended
    assert not (agent_home / "files" / "busy.json").exists()
    assert (agent_home / "config.json").exists()


def test_clean_workspace_empties_it_before_the_first_job(agent_home, fake_primary, running_agent):
    ws = agent_home / "workspaces" / "p"
    (ws / "old-dir").mkdir(parents=True)
    (ws / "old-file").write_text("from an earlier home")
    fake_primary.assignments.append(run(1, "ls -A; touch made", clean=True))
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.log(1, "a") == b""
    assert prepare_lines(fake_primary, 1) == [CLEANED, "static files: none"]
    # Without clean_workspace the cache is kept.
    fake_primary.assignments.append(run(2, "ls -A"))
    fake_primary.wait_for(lambda: fake_primary.finished == [1, 2])
    assert fake_primary.log(2, "a") == b"made\n"
    assert prepare_lines(fake_primary, 2) == ["static files: none"]


def test_static_files_are_fetched_once_and_kept_in_sync(agent_home, fake_primary, running_agent):
    ws = agent_home / "workspaces" / "p"
    app, blob, spaced = b"[app]\nport = 80\n", bytes(range(256)) * 40, b"spaces\r\n"
    fake_primary.files = {"conf/app.ini": app, "data.bin": blob, "dir/with space.txt": spaced}
    files = [spec("conf/app.ini", app), spec("data.bin", blob), spec("dir/with space.txt", spaced)]
    fake_primary.assignments.append(run(1, "cat conf/app.ini", files=files))
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fetched(fake_primary, 1) == ["conf/app.ini", "data.bin", "dir/with space.txt"]
    assert fake_primary.log(1, "a") == app  # there before the first job
    assert (ws / "data.bin").read_bytes() == blob
    assert (ws / "dir" / "with space.txt").read_bytes() == spaced
    assert prepare_lines(fake_primary, 1) == [
        "static files: fetched conf/app.ini (16 bytes)",
        "static files: fetched data.bin (10240 bytes)",
        "static files: fetched dir/with space.txt (8 bytes)",
    ]
    record = json.loads((agent_home / "files" / "p.json").read_text())
    assert record["data.bin"] == hashlib.sha256(blob).hexdigest()

    # Same files again: nothing is fetched.
    fake_primary.assignments.append(run(2, "true", files=files))
    fake_primary.wait_for(lambda: fake_primary.finished == [1, 2])
    assert fetched(fake_primary, 2) == []
    assert "static files: unchanged data.bin" in prepare_lines(fake_primary, 2)

    # app.ini changed, data.bin dropped: one fetch, one deletion.
    app2 = b"[app]\nport = 8080\n"
    fake_primary.files["conf/app.ini"] = app2
    files = [spec("conf/app.ini", app2), spec("dir/with space.txt", spaced)]
    fake_primary.assignments.append(run(3, "cat conf/app.ini", files=files))
    fake_primary.wait_for(lambda: fake_primary.finished == [1, 2, 3])
    assert fetched(fake_primary, 3) == ["conf/app.ini"]
    assert fake_primary.log(3, "a") == app2
    assert not (ws / "data.bin").exists()
    assert prepare_lines(fake_primary, 3) == [
        "static files: deleted data.bin",
        "static files: fetched conf/app.ini (18 bytes)",
        "static files: unchanged dir/with space.txt",
    ]


def test_prepare_is_delivered_after_start_and_before_the_first_job(fake_primary, running_agent):
    fake_primary.files = {"f": b"x"}
    fake_primary.assignments.append(run(1, "true", "true", files=[spec("f", b"x")]))
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    calls = [c for c in fake_primary.calls if c.startswith("/agent/v1/runs/1/")]
    assert calls.index("/agent/v1/runs/1/start") < calls.index("/agent/v1/runs/1/files/f")
    assert calls.index("/agent/v1/runs/1/files/f") < calls.index("/agent/v1/runs/1/prepare")
    assert calls.index("/agent/v1/runs/1/prepare") < calls.index("/agent/v1/runs/1/jobs/a/status")
    assert calls.count("/agent/v1/runs/1/prepare") == 1
    assert fake_primary.prepares[1] == [
        {"attempt": 1, "lines": ["static files: fetched f (1 bytes)"]}
    ]


def _assert_failed_before_the_first_job(fake, agent_home, run_id, reason):
    fake.wait_for(lambda: fake.finished == [run_id])
    assert fake.states(run_id, "a") == ["running", "failed"]
    assert fake.statuses[(run_id, "a")][-1]["exit_code"] is None
    assert fake.states(run_id, "b") == ["skipped"]
    log = fake.log(run_id, "a").decode()
    assert log.count("\n") == 1 and reason in log
    assert "could not be prepared" in log
    assert reason in prepare_lines(fake, run_id)[-1]
    assert not (agent_home / "workspaces" / "p" / "ran").exists()


def test_sha_mismatch_fails_the_run_with_a_clear_line(agent_home, fake_primary, running_agent):
    fake_primary.files = {"conf/app.ini": b"tampered"}
    files = [spec("conf/app.ini", b"what the pipeline says")]
    fake_primary.assignments.append(run(1, "touch ran", "touch ran", files=files))
    running_agent()
    _assert_failed_before_the_first_job(
        fake_primary, agent_home, 1, "conf/app.ini: the bytes fetched do not match"
    )
    assert not (agent_home / "workspaces" / "p" / "conf" / "app.ini").exists()


def test_a_file_the_primary_lacks_fails_the_run(agent_home, fake_primary, running_agent):
    fake_primary.assignments.append(run(1, "touch ran", "true", files=[spec("gone.txt", b"x")]))
    running_agent()
    _assert_failed_before_the_first_job(
        fake_primary, agent_home, 1, "gone.txt: the primary has no such file (HTTP 404)"
    )


def test_a_path_out_of_the_workspace_is_refused(agent_home, fake_primary, running_agent):
    fake_primary.files = {"../../escape": b"x"}
    files = [spec("../../escape", b"x")]
    fake_primary.assignments.append(run(1, "touch ran", "true", files=files))
    running_agent()
    _assert_failed_before_the_first_job(
        fake_primary, agent_home, 1, "refusing the path '../../escape'"
    )
    assert fake_primary.file_requests == []
    assert not (agent_home / "escape").exists() and not (agent_home.parent / "escape").exists()


def test_a_fetch_is_retried_through_an_outage(agent_home, fake_primary, running_agent):
    fake_primary.files = {"f": b"data"}
    fake_primary.file_error = (503, {"error": "down", "code": "unavailable"})
    fake_primary.assignments.append(run(1, "cat f", files=[spec("f", b"data")]))
    running_agent()
    fake_primary.wait_for(lambda: len(fake_primary.file_requests) >= 2)
    assert fake_primary.prepares == {}  # nothing reported while the file is missing
    fake_primary.file_error = None
    fake_primary.wait_for(lambda: fake_primary.finished == [1], timeout=15)
    assert fake_primary.log(1, "a") == b"data"


def test_stale_while_fetching_drops_the_run(agent_home, fake_primary, running_agent):
    fake_primary.file_error = (409, {"error": "stale", "code": "stale_attempt"})
    fake_primary.assignments.append(run(1, "touch ran", files=[spec("f", b"x")]))
    agent, _ = running_agent()
    fake_primary.wait_for(lambda: fake_primary.file_requests)
    fake_primary.wait_for(lambda: agent.held_runs() == [])
    assert fake_primary.prepares == {} and fake_primary.statuses == {}
    assert fake_primary.finished == []
    assert not (agent_home / "workspaces" / "p" / "ran").exists()


def test_cancel_while_a_fetch_is_retried(agent_home, fake_primary, running_agent):
    fake_primary.file_error = (503, {"error": "down", "code": "unavailable"})
    fake_primary.assignments.append(run(1, "touch ran", files=[spec("f", b"x")]))
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.file_requests)
    fake_primary.cancels.add((1, 1))
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.states(1, "a") == ["skipped"]
    assert prepare_lines(fake_primary, 1) == ["cancelled while preparing the workspace"]


def test_slots_from_the_primary_are_adopted_and_kept(
    agent_home, fake_primary, running_agent, tmp_path
):
    fake_primary.slots = 1
    agent, _ = running_agent()
    fake_primary.wait_for(lambda: len(fake_primary.polls) >= 2)
    assert fake_primary.polls[0]["slots"] == 2
    assert fake_primary.polls[-1]["slots"] == 1 and agent.slots == 1
    assert json.loads((agent_home / "config.json").read_text())["slots"] == 1
    assert Agent(agent_home).slots == 1  # a restart keeps it
    # One slot: of two runs of different pipelines only one is taken, as the poll after
    # the answer that brought them shows.
    go = tmp_path / "go"
    fake_primary.assignments.extend([run(i, wait_file_step(go), pipeline=f"p{i}") for i in (1, 2)])
    taken = fake_primary.poll_after_assignments()["runs"]
    assert [r["run_id"] for r in taken] == [1]
    go.touch()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.started == [1]


def test_the_workspace_is_prepared_while_the_start_is_on_its_way(
    agent_home, fake_primary, running_agent
):
    """The start's round trip is on the dispatch path: the agent prepares the workspace
    (here: fetches a static file) meanwhile, and runs the first job only once the primary
    confirmed the start."""
    app = b"[app]\nport = 80\n"
    fake_primary.files = {"conf/app.ini": app}
    fake_primary.start_gate = threading.Event()
    marker = agent_home / "workspaces" / "p" / "job-ran"  # jobs write only their workspace
    step = "touch job-ran; cat conf/app.ini"
    fake_primary.assignments.append(run(1, step, files=[spec("conf/app.ini", app)]))
    running_agent()
    fake_primary.wait_for(lambda: fake_primary.start_requests == [1] and fetched(fake_primary, 1))
    assert fake_primary.started == []  # not answered yet, and no job has run
    assert not marker.exists()
    fake_primary.start_gate.set()
    fake_primary.wait_for(lambda: fake_primary.finished == [1])
    assert fake_primary.log(1, "a") == app


def test_a_start_the_primary_refuses_runs_no_job_though_the_workspace_is_ready(
    agent_home, fake_primary, running_agent
):
    app = b"x\n"
    fake_primary.files = {"f": app}
    fake_primary.start_gate = threading.Event()
    marker = agent_home / "workspaces" / "p" / "job-ran"
    fake_primary.assignments.append(run(1, "touch job-ran", files=[spec("f", app)]))
    agent, _ = running_agent()
    fake_primary.wait_for(lambda: fake_primary.start_requests == [1] and fetched(fake_primary, 1))
    with fake_primary.lock:
        fake_primary.assignments.clear()
        fake_primary.stale.add((1, 1))  # taken back while the start was on its way
    fake_primary.start_gate.set()
    fake_primary.wait_for(lambda: not agent.held_runs() and not agent._runs)
    assert not marker.exists()
    assert fake_primary.started == [] and fake_primary.finished == []
