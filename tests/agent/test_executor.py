"""The executor with real /bin/sh steps, real spool files and real process groups."""

import threading
import time
from pathlib import Path

import psutil
import pytest
from fleet import wait_for

from agent.assignment import parse_assignment
from agent.executor import RunExecutor, job_env, log_path

BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent-home",
    "LANG": "C.UTF-8",
    "CIFLEET_TEST_SECRET_SENTINEL": "do-not-leak",
}


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.started = threading.Event()

    def job_started(self, job):
        self.events.append(("started", job))
        self.started.set()

    def job_finished(self, job, state, exit_code, log_size):
        self.events.append(("finished", job, state, exit_code, log_size))

    def run_finished(self):
        self.events.append(("run_finished",))

    def final(self, job):
        return next(e[2:] for e in self.events if e[0] == "finished" and e[1] == job)


def make(tmp_path: Path, jobs: list[dict], env=None, run_id=7, grace=1.0, base_env=BASE_ENV):
    assignment = parse_assignment(
        {"run_id": run_id, "attempt": 2, "pipeline": "pipe", "env": env or {}, "jobs": jobs}
    )
    sink = RecordingSink()
    ex = RunExecutor(
        assignment,
        tmp_path / "ws" / "pipe",
        tmp_path / "spool" / f"{run_id}-2",
        sink,
        kill_grace=grace,
        base_env=base_env,
    )
    return ex, sink


def job(name, *steps, **kw):
    return {"name": name, "steps": list(steps), **kw}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_output_is_spooled_byte_exact(tmp_path):
    ex, sink = make(
        tmp_path,
        [
            job(
                "build",
                r"printf 'a\377b\r\nline2\r\n'; printf 'err1\n' >&2; printf 'out2\n'",
                r"printf 'err2\n' >&2; printf 'last line without newline'",
            )
        ],
    )
    assert ex.run() == {"build": "success"}
    expected = b"a\xffb\r\nline2\r\nerr1\nout2\nerr2\nlast line without newline"
    assert log_path(ex.spool_dir, "build").read_bytes() == expected
    assert sink.events == [
        ("started", "build"),
        ("finished", "build", "success", 0, len(expected)),
        ("run_finished",),
    ]


def test_first_failing_step_ends_the_job_and_dependents_are_skipped(tmp_path):
    ex, sink = make(
        tmp_path,
        [
            job("a", "echo one", "exit 3", "touch never-created"),
            job("b", "touch b-ran", needs=["a"]),
            job("c", "touch c-ran"),
            job("d", "touch d-ran", needs=["b"]),
            job("e", "touch e-ran", needs=["c"]),
        ],
    )
    states = ex.run()
    assert states == {"a": "failed", "b": "skipped", "c": "success", "d": "skipped", "e": "success"}
    assert sink.final("a") == ("failed", 3, 4)
    assert sink.final("b") == ("skipped", None, None)
    assert not (ex.workspace / "never-created").exists()
    assert not (ex.workspace / "b-ran").exists()
    assert (ex.workspace / "c-ran").exists()
    assert not log_path(ex.spool_dir, "b").exists()
    assert sink.events[-1] == ("run_finished",)


# Job timeouts here are long enough (2 s) that the step has surely written its pid files
# (and set its trap) before the timeout strikes, even on a loaded machine.


def test_timeout_kills_the_whole_process_tree(tmp_path):
    ex, sink = make(
        tmp_path,
        [
            job(
                "slow",
                "sleep 1000 & echo $! > bg.pid; (sleep 1000; true) & echo $! > sub.pid; sleep 1000",
                timeout=2,
            )
        ],
    )
    assert ex.run() == {"slow": "timed_out"}  # not after 1000 s: the timeout ended it
    state, exit_code, _ = sink.final("slow")
    assert state == "timed_out"
    assert exit_code == -15
    for name in ("bg.pid", "sub.pid"):
        pid = int((ex.workspace / name).read_text())
        assert gone(pid), f"{name} {pid} survived the timeout"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(tmp_path):
    ex, sink = make(
        tmp_path,
        [job("stubborn", "trap '' TERM; echo $$ > sh.pid; sleep 1000", timeout=2)],
        grace=0.5,
    )
    started = time.monotonic()
    ex.run()
    assert time.monotonic() - started >= 2.5  # the timeout, then the whole grace
    assert sink.final("stubborn")[:2] == ("timed_out", -9)
    assert gone(int((ex.workspace / "sh.pid").read_text()))


def test_background_processes_end_with_the_job(tmp_path):
    ex, sink = make(
        tmp_path, [job("bg", "sleep 1000 & echo $! > bg.pid", "true"), job("next", "true")]
    )
    assert ex.run() == {"bg": "success", "next": "success"}
    assert gone(int((ex.workspace / "bg.pid").read_text()))


def test_cancel_kills_the_running_job_and_skips_the_rest(tmp_path):
    ex, sink = make(
        tmp_path, [job("long", "echo $$ > sh.pid; sleep 1000"), job("after", "touch after-ran")]
    )
    result = {}
    t = threading.Thread(target=lambda: result.update(ex.run()))
    t.start()
    pidfile = ex.workspace / "sh.pid"
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the job's pid")
    ex.cancel()
    t.join(5)
    assert not t.is_alive()
    assert result == {"long": "cancelled", "after": "skipped"}
    assert sink.final("long")[:2] == ("cancelled", -15)
    assert gone(int((ex.workspace / "sh.pid").read_text()))
    assert not (ex.workspace / "after-ran").exists()


def test_cancel_before_start_skips_everything(tmp_path):
    ex, sink = make(tmp_path, [job("a", "touch a-ran")])
    ex.cancel()
    assert ex.run() == {"a": "skipped"}
    assert not (ex.workspace / "a-ran").exists()


def test_job_environment_is_built_not_inherited(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFLEET_TEST_SECRET_SENTINEL", "do-not-leak")
    ex, _ = make(
        tmp_path,
        [job("env", "env > env.txt", env={"B": "job", "C": "job"})],
        env={"A": "run", "B": "run"},
        base_env=None,
    )
    ex.run()
    lines = (ex.workspace / "env.txt").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert "CIFLEET_TEST_SECRET_SENTINEL" not in env
    assert "do-not-leak" not in (ex.workspace / "env.txt").read_text()
    assert env["CI"] == "true" and env["CIFLEET"] == "true"
    assert env["CIFLEET_RUN_ID"] == "7" and env["CIFLEET_RUN_ATTEMPT"] == "2"
    assert env["CIFLEET_PIPELINE"] == "pipe" and env["CIFLEET_JOB"] == "env"
    assert Path(env["CIFLEET_WORKSPACE"]) == ex.workspace
    assert Path(env["PWD"]).resolve() == ex.workspace.resolve()
    assert (env["A"], env["B"], env["C"]) == ("run", "job", "job")


def test_job_env_keeps_only_the_listed_agent_variables(tmp_path):
    assignment = parse_assignment(
        {
            "run_id": 1,
            "attempt": 1,
            "pipeline": "p",
            "env": {"PATH": "/run/path"},
            "jobs": [job("j", "true")],
        }
    )
    base = dict(BASE_ENV, TMPDIR="/tmp/x", LC_ALL="C", USER="agent", SSH_AUTH_SOCK="/s")
    env = job_env(assignment, assignment.jobs[0], tmp_path, base)
    assert env["HOME"] == "/nonexistent-home"
    assert env["TMPDIR"] == "/tmp/x" and env["LC_ALL"] == "C" and env["LANG"] == "C.UTF-8"
    assert env["PATH"] == "/run/path"  # the run may override it
    for leaked in ("USER", "SSH_AUTH_SOCK", "CIFLEET_TEST_SECRET_SENTINEL"):
        assert leaked not in env


def test_workspace_is_kept_between_runs(tmp_path):
    first, _ = make(tmp_path, [job("a", "echo cached > cache.txt")], run_id=1)
    first.run()
    second, sink = make(tmp_path, [job("a", "cat cache.txt")], run_id=2)
    assert second.run() == {"a": "success"}
    assert log_path(second.spool_dir, "a").read_bytes() == b"cached\n"


def test_stdin_is_dev_null(tmp_path):
    ex, _ = make(tmp_path, [job("a", "cat; echo done")])
    assert ex.run() == {"a": "success"}
    assert log_path(ex.spool_dir, "a").read_bytes() == b"done\n"


@pytest.mark.parametrize(
    "bad",
    [
        {"run_id": 1, "attempt": 1, "pipeline": "../x", "jobs": []},
        {"run_id": 1, "attempt": 1, "pipeline": "p", "jobs": [job("a/b", "true")]},
        {"run_id": 1, "attempt": 1, "pipeline": "p", "jobs": [job("a", "true"), job("a", "true")]},
        {"run_id": "1", "attempt": 1, "pipeline": "p", "jobs": []},
        {"run_id": 1, "attempt": 1, "pipeline": "p", "env": {"A=B": "x"}, "jobs": []},
    ],
)
def test_malformed_assignments_are_refused(bad):
    with pytest.raises(ValueError):
        parse_assignment(bad)
