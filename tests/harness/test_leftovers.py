"""A test run that was killed leaves no process running for the next one: each run locks
its folders, and the next run kills what names a folder whose run has ended
(tests/leftovers.py, used for pytest's base folders and PostgreSQL servers)."""

import subprocess
import sys
import textwrap

import psutil
from fleet import wait_for
from leftovers import ended_runs, kill_what_ended_runs_left

# A "run": locks its folder, starts a long child that names the folder, says so, waits.
RUN = textwrap.dedent(
    """
    import subprocess, sys
    from leftovers import hold_lock
    hold_lock(sys.argv[1])
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1] + "/marker"],
        start_new_session=True,
    )
    print(child.pid, flush=True)
    sys.stdin.read()
    """
)


def start_run(folder, tests_dir) -> tuple[subprocess.Popen, int]:
    folder.mkdir()
    run = subprocess.Popen(
        [sys.executable, "-c", RUN, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(tests_dir)},
    )
    return run, int(run.stdout.readline())


def test_only_the_processes_of_runs_that_ended_are_killed(tmp_path, request):
    tests_dir = request.config.rootpath / "tests"
    killed_run, orphan = start_run(tmp_path / "run-killed", tests_dir)
    live_run, kept = start_run(tmp_path / "run-live", tests_dir)
    (tmp_path / "run-unlocked").mkdir()  # made by a run from before the locks: left alone
    try:
        killed_run.kill()  # no teardown: its child runs on
        killed_run.wait(10)
        assert psutil.pid_exists(orphan)
        pattern, folder = str(tmp_path / "run-*"), tmp_path / "run-killed"
        assert ended_runs(pattern) == [folder]

        lines = kill_what_ended_runs_left(pattern)
        assert lines == [
            f"pid {orphan}: {sys.executable} -c import time; time.sleep(600) {folder}/marker"
        ]
        wait_for(lambda: not psutil.pid_exists(orphan), 10, "the orphan gone")
        assert psutil.Process(kept).is_running()
        assert kill_what_ended_runs_left(pattern) == []  # once per folder
    finally:
        live_run.kill()
        live_run.wait(10)
        for pid in (orphan, kept):
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
