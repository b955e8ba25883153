"""Scheduling with real agents: capacity and queue order, lost runs, drain, lock, tags,
sticky homes, cancel and timeouts."""

import os
import signal
import subprocess

import psutil
from fleet import BIN, shared_file, wait_file_step, wait_for
from pgcluster import both_engines

pytestmark = both_engines


def _events(path) -> list[tuple[str, int, int, str]]:
    rows = []
    for line in path.read_text().splitlines():
        kind, run_id, stamp, workspace = line.split(" ", 3)
        rows.append((kind, int(run_id), int(stamp), workspace.split("/workspaces/")[0]))
    return rows


def test_capacity_is_never_exceeded_and_runs_start_in_queue_order(primary, start_agent, fleet_root):
    start_agent("cap-a", slots=2)
    start_agent("cap-b", slots=2)
    events = shared_file(fleet_root / "events.txt")
    go = fleet_root / "go"
    # Every job waits for `go`: the first four fill both workers' slots and stay.
    step = (
        f'echo "start $CIFLEET_RUN_ID $(date +%s%N) $CIFLEET_WORKSPACE" >> {events}; '
        f"{wait_file_step(go)}; "
        f'echo "end $CIFLEET_RUN_ID $(date +%s%N) $CIFLEET_WORKSPACE" >> {events}'
    )
    ids = []
    for i in range(20):
        # Distinct pipelines, so stickiness plays no part: this is about slots and order.
        primary.pipeline(f"name: cap-{i:02}\njobs:\n  - name: work\n    steps: ['{step}']\n")
    for i in range(20):
        ids.append(primary.trigger(f"cap-{i:02}"))
    # Full: the four oldest run (two on each worker), the rest wait in the queue.
    wait_for(
        lambda: events.exists() and len(events.read_text().splitlines()) >= 4, 60, "four starts"
    )
    states = [primary.run(run_id)["state"] for run_id in ids]
    assert states == ["running"] * 4 + ["queued"] * 16, states
    assert sorted(w["slots_used"] for w in primary.workers()) == [2, 2]
    go.touch()
    runs = [primary.wait_run(run_id, timeout=120) for run_id in ids]
    assert all(r["state"] == "success" for r in runs)

    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    for kind, _, _, worker in sorted(_events(events), key=lambda e: (e[2], e[0] == "start")):
        running[worker] = running.get(worker, 0) + (1 if kind == "start" else -1)
        peak[worker] = max(peak.get(worker, 0), running[worker])
    assert sorted(peak.values()) == [2, 2], peak  # both workers, never more than their slots
    # Queue order: runs were assigned oldest first.
    assigned = [r["assigned_at"] for r in runs]
    assert assigned == sorted(assigned)


def test_killed_agent_loses_its_run_which_finishes_elsewhere(primary, start_agent, fleet_root):
    a = start_agent("doomed")
    start_agent("survivor")
    # Attempt 1 waits for a file nobody creates: it can only end by its worker's loss.
    wait = wait_file_step(fleet_root / "never")
    step = f"echo attempt $CIFLEET_RUN_ATTEMPT; [ $CIFLEET_RUN_ATTEMPT = 1 ] && {{ {wait}; }}"
    primary.pipeline(
        f"name: fragile\njobs:\n  - name: work\n    steps: ['{step}; echo finished']\n"
    )
    primary.client.json("POST", "/api/v1/workers/survivor/lock")  # first run goes to doomed
    run_id = primary.trigger("fragile")
    wait_for(lambda: primary.job_log(run_id, "work") == b"attempt 1\n", 20, "the job to start")
    primary.client.json("POST", "/api/v1/workers/survivor/unlock")
    os.kill(a.proc.pid, signal.SIGKILL)
    run = primary.wait_run(run_id, timeout=40)
    assert run["state"] == "success" and run["worker_name"] == "survivor"
    assert run["attempt"] == 2
    assert primary.job_log(run_id, "work") == b"attempt 2\nfinished\n"
    # Lost because its lease ran out: nothing was heard from doomed for the heartbeat timeout.
    lost = run["attempts"][0]
    assert (lost["worker_name"], lost["outcome"]) == ("doomed", "lost")
    assert "doomed stopped answering (no contact for 6 s)" in lost["reason"], lost
    # The lost attempt's partial log stays, beside the finished one.
    status, headers, lost_log = primary.client.request(
        "GET", f"/api/v1/runs/{run_id}/attempts/1/jobs/work/log"
    )
    assert status == 200 and headers["x-attempt-outcome"] == "lost", headers
    assert lost_log.startswith(b"attempt 1\n")
    assert primary.worker("doomed")["state"] == "inactive"


def test_drain_lets_the_run_finish_and_starts_nothing_more(primary, start_agent, fleet_root):
    start_agent("drained")
    go_on = fleet_root / "go-on"  # the first run waits for it: it is surely running below
    step = f"{wait_file_step(go_on)}; echo done"
    primary.pipeline(f"name: long\njobs:\n  - name: w\n    steps: ['{step}']\n")
    primary.pipeline("name: next\njobs:\n  - name: w\n    steps: ['echo next']\n")
    first = primary.trigger("long")
    wait_for(lambda: primary.run(first)["state"] == "running", 20, "the run to start")
    worker = primary.client.json("POST", "/api/v1/workers/drained/drain")
    assert worker["state"] == "draining" and worker["draining"] is True
    second = primary.trigger("next")
    go_on.touch()
    assert primary.wait_run(first, timeout=30)["state"] == "success"
    # The slot is free now. Asked again (it changes nothing), drain plans the queue before
    # it answers: the second run stays where that decision left it.
    primary.client.json("POST", "/api/v1/workers/drained/drain")
    waiting = primary.run(second)
    assert waiting["state"] == "queued"
    assert waiting["reason"] == "waiting: none of the 1 matching workers can take it now"
    assert primary.client.json("POST", "/api/v1/workers/drained/flood")["state"] == "active"
    assert primary.wait_run(second, timeout=30)["state"] == "success"


def test_lock_from_the_cli_and_tags_decide_where_runs_go(primary, start_agent):
    start_agent("plain")
    primary.pipeline("name: gpu-job\ntags: [gpu]\njobs:\n  - name: w\n    steps: ['echo gpu']\n")
    run_id = primary.trigger("gpu-job")
    wait_for(
        lambda: primary.run(run_id)["reason"] == "waiting: no worker has any of the tags ['gpu']",
        10,
        "the waiting reason",
    )

    def cli(*args):
        return subprocess.run(
            [str(BIN / "cifleet-primary"), "worker", *args, "--data-dir", str(primary.data_dir)],
            capture_output=True,
            text=True,
            timeout=30,
        )

    locked = cli("lock", "plain")
    assert locked.returncode == 0 and "plain  locked" in locked.stdout
    # Changing tags plans the queue before it answers: the gpu run stays queued.
    assert cli("tags", "plain", "--tags", "gpu,linux").returncode == 0
    assert primary.run(run_id)["state"] == "queued"  # locked: takes nothing new
    assert cli("unlock", "plain").returncode == 0
    run = primary.wait_run(run_id, timeout=30)
    assert run["state"] == "success" and run["worker_name"] == "plain"
    listing = cli("list")
    assert "plain  active  tags=gpu,linux  slots=0/1" in listing.stdout


def test_a_pipeline_sticks_to_its_home(primary, start_agent):
    start_agent("home-a")
    start_agent("home-b")
    primary.pipeline("name: sticky\njobs:\n  - name: w\n    steps: ['echo $CIFLEET_RUN_ID']\n")
    runs = []
    for _ in range(3):
        runs.append(primary.wait_run(primary.trigger("sticky"), timeout=30))
    assert len({r["worker_name"] for r in runs}) == 1
    assert runs[0]["placement"][0] == f"chosen: {runs[0]['worker_name']} (first run)"
    # "(kept home" also when the host's load counts as overloaded: both agents share the
    # host, so neither is less loaded (the placement says so); the home is kept either way.
    assert runs[1]["placement"][0].startswith(f"chosen: {runs[0]['worker_name']} (kept home")
    pipeline = primary.client.json("GET", "/api/v1/pipelines/sticky")
    assert pipeline["home_worker_id"] == runs[0]["worker_id"]


def test_cancel_kills_the_whole_process_tree(primary, start_agent, fleet_root):
    start_agent("victim")
    pids = shared_file(fleet_root / "pids.txt")
    primary.pipeline(f"""
name: endless
jobs:
  - name: w
    steps: ['echo $$ > {pids}; (sleep 300; echo never) & echo $! >> {pids}; wait']
""")
    run_id = primary.trigger("endless")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2, 20, "both pids")
    tree = [int(p) for p in pids.read_text().split()]
    assert all(psutil.pid_exists(p) for p in tree)
    primary.client.json("POST", f"/api/v1/runs/{run_id}/cancel")
    run = primary.wait_run(run_id, timeout=30)  # not the 300 s of the sleep
    assert run["state"] == "cancelled" and run["jobs"][0]["state"] == "cancelled"

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: all(gone(p) for p in tree), 15, "the process tree to be gone")


def test_a_job_over_its_timeout_is_killed_and_timed_out(primary, start_agent):
    start_agent("slowpoke")
    primary.pipeline("""
name: too-slow
jobs:
  - name: w
    timeout: 1
    steps: ['echo begin; sleep 60']
  - name: after
    needs: [w]
    steps: ['echo never']
""")
    run = primary.wait_run(primary.trigger("too-slow"), timeout=40)
    assert run["state"] == "timed_out"
    assert [(j["name"], j["state"]) for j in run["jobs"]] == [
        ("w", "timed_out"),
        ("after", "skipped"),
    ]
    assert primary.job_log(run["id"], "w") == b"begin\n"


def test_a_worker_of_another_version_gets_nothing_until_upgraded(primary, fleet_root):
    from fleet import register_agent

    assert register_agent(primary, fleet_root, "old-agent").returncode == 0
    # A real agent process that reports another version, as an un-upgraded host would.
    code = (
        "import sys, agent; agent.__version__ = '0.0.1'; from agent.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    old = subprocess.Popen(
        [str(BIN / "python"), "-c", code, "run", "--home", str(fleet_root / "old-agent")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: primary.worker("old-agent")["state"] == "version mismatch",
            20,
            "the version mismatch to show",
        )
        primary.pipeline("name: any\njobs:\n  - name: w\n    steps: ['true']\n")
        run_id = primary.trigger("any")  # planned before the trigger answers
        run = primary.run(run_id)
        assert run["state"] == "queued"
        assert "old-agent: passed over, version mismatch" in run["placement"]
    finally:
        os.killpg(old.pid, signal.SIGKILL)
        old.wait()


def test_the_queue_survives_a_primary_restart(primary, start_agent):
    primary.pipeline("name: kept\njobs:\n  - name: w\n    steps: ['echo kept']\n")
    queued = [primary.trigger("kept") for _ in range(3)]
    assert all(primary.run(r)["state"] == "queued" for r in queued)
    primary.stop(signal.SIGKILL)  # a crash, not a clean stop
    primary.start()
    start_agent("late-worker")
    runs = [primary.wait_run(r, timeout=60) for r in queued]
    assert [r["state"] for r in runs] == ["success"] * 3
    assert all(primary.job_log(r["id"], "w") == b"kept\n" for r in runs)


def test_removing_a_worker_requeues_its_running_run_elsewhere(primary, start_agent, fleet_root):
    start_agent("removed")
    start_agent("remaining")
    primary.client.json("POST", "/api/v1/workers/remaining/lock")  # the run starts on removed
    # Attempt 1 waits for a file nobody creates: it ends only with its worker's removal.
    wait = wait_file_step(fleet_root / "never")
    step = f"echo on; [ $CIFLEET_RUN_ATTEMPT = 1 ] && {{ {wait}; }}; echo off"
    primary.pipeline(f"name: moved\njobs:\n  - name: w\n    steps: ['{step}']\n")
    run_id = primary.trigger("moved")
    wait_for(lambda: primary.job_log(run_id, "w") == b"on\n", 20, "the job to start")
    primary.client.json("POST", "/api/v1/workers/remaining/unlock")
    primary.client.json("DELETE", "/api/v1/workers/removed")
    run = primary.wait_run(run_id, timeout=30)
    assert run["state"] == "success" and run["worker_name"] == "remaining"
    assert [(a["worker_name"], a["outcome"]) for a in run["attempts"]] == [
        ("removed", "lost"),
        ("remaining", "success"),
    ]
    assert primary.job_log(run_id, "w") == b"on\noff\n"
