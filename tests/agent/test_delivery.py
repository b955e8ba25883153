"""Delivery to a fake primary over real mutual TLS: order, offsets, outages, stale runs."""

import threading

import psutil
from fleet import wait_file_step

from agent.assignment import parse_assignment
from agent.client import Client, agent_context
from agent.executor import RunExecutor
from agent.reporter import RunReporter, Stale


def assignment(run_id, *jobs, attempt=1):
    return parse_assignment(
        {"run_id": run_id, "attempt": attempt, "pipeline": "p", "jobs": list(jobs)}
    )


def job(name, *steps, **kw):
    return {"name": name, "steps": list(steps), **kw}


def setup(agent_home, fake, run, tmp_path, prepare=None):
    stop = threading.Event()
    client = Client(fake.url, agent_context(agent_home))
    spool = tmp_path / "spool" / f"{run.run_id}-{run.attempt}"
    reporter = RunReporter(client, run, spool, stop)
    executor = RunExecutor(run, tmp_path / "ws", spool, reporter, kill_grace=1.0, prepare=prepare)
    return reporter, executor, stop


def run_both(reporter, executor):
    """Start, execute and deliver like agent.runner does; return the delivery thread."""
    errors = []

    def deliver():
        try:
            if reporter.start_run():
                threading.Thread(target=executor.run, daemon=True).start()
                reporter.deliver()
        except Exception as e:  # surfaced by the test
            errors.append(e)

    t = threading.Thread(target=deliver, daemon=True)
    t.start()
    return t, errors


def test_everything_arrives_in_order_and_byte_exact(agent_home, fake_primary, tmp_path):
    run = assignment(
        1,
        job("a", r"printf 'x\377\r\n'; printf 'tail' >&2"),
        job("b", "exit 4", needs=[]),
        job("c", "true", needs=["b"]),
    )
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    t, errors = run_both(reporter, executor)
    t.join(15)
    assert not errors
    assert fake_primary.started == [1] and fake_primary.finished == [1]
    assert fake_primary.log(1, "a") == b"x\xff\r\ntail"
    assert fake_primary.states(1, "a") == ["running", "success"]
    assert fake_primary.statuses[(1, "a")][-1] == {
        "attempt": 1,
        "state": "success",
        "exit_code": 0,
        "log_size": 8,
    }
    assert fake_primary.states(1, "b") == ["running", "failed"]
    assert fake_primary.statuses[(1, "b")][-1]["exit_code"] == 4
    assert fake_primary.states(1, "c") == ["skipped"]
    # finish is the last call, after every final status
    assert fake_primary.calls[-1] == "/agent/v1/runs/1/finish"


def test_a_one_job_run_takes_three_calls(agent_home, fake_primary, tmp_path):
    # The job's running status goes with the prepare notes, its final status with finish.
    run = assignment(6, job("a", "printf done"))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path, prepare=lambda _: None)
    t, errors = run_both(reporter, executor)
    t.join(15)
    assert not errors
    calls = [c for c in fake_primary.calls if c.startswith("/agent/v1/runs/6/")]
    assert calls == [
        "/agent/v1/runs/6/start",
        "/agent/v1/runs/6/prepare",
        "/agent/v1/runs/6/jobs/a/log",
        "/agent/v1/runs/6/finish",
    ]
    assert fake_primary.states(6, "a") == ["running", "success"]
    assert fake_primary.log(6, "a") == b"done"


def test_output_reaches_the_primary_while_the_job_runs(agent_home, fake_primary, tmp_path):
    go_on = tmp_path / "go-on"  # the job waits for it: it surely still runs below
    run = assignment(2, job("a", f"printf early; {wait_file_step(go_on)}; printf late"))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    t, errors = run_both(reporter, executor)
    fake_primary.wait_for(lambda: fake_primary.log(2, "a") == b"early")
    assert fake_primary.finished == []
    go_on.touch()
    t.join(10)
    assert not errors
    assert fake_primary.log(2, "a") == b"earlylate"


def test_an_outage_does_not_stop_the_job_and_nothing_is_lost(agent_home, fake_primary, tmp_path):
    # 2.5 MB with numbered lines: several chunks, and any duplicate or gap shows. After 100
    # lines the job waits until the primary is gone.
    gone = tmp_path / "primary-gone"
    script = (
        "i=0; while [ $i -lt 60000 ]; do echo line-$i-padding-padding-padding; "
        f"i=$((i+1)); if [ $i = 100 ]; then touch outage; {wait_file_step(gone)}; fi; done"
    )
    run = assignment(3, job("a", script))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    t, errors = run_both(reporter, executor)
    fake_primary.wait_for(lambda: (tmp_path / "ws" / "outage").exists())
    fake_primary.stop()
    gone.touch()
    # The job runs on and finishes while the primary is away.
    fake_primary.wait_for(
        lambda: [e for e in reporter._events if e[0] == "run_finished"], timeout=30
    )
    assert fake_primary.finished == []
    fake_primary.start()
    t.join(60)
    assert not errors
    expected = b"".join(b"line-%d-padding-padding-padding\n" % i for i in range(60000))
    assert fake_primary.log(3, "a") == expected
    assert fake_primary.states(3, "a")[-1] == "success"
    assert fake_primary.finished == [3]


def test_503_is_retried(agent_home, fake_primary, tmp_path):
    run = assignment(4, job("a", "echo hi"))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    fake_primary.down = True
    t, errors = run_both(reporter, executor)
    # Refused twice: so it was retried, and nothing was started meanwhile.
    fake_primary.wait_for(lambda: fake_primary.calls.count("/agent/v1/runs/4/start") >= 2)
    assert fake_primary.started == []
    fake_primary.down = False
    t.join(40)
    assert not errors
    assert fake_primary.log(4, "a") == b"hi\n" and fake_primary.finished == [4]


def test_log_gap_and_log_incomplete_resend_from_the_primary_size(
    agent_home, fake_primary, tmp_path
):
    more, end = tmp_path / "more", tmp_path / "end"  # the test lets the job go on
    steps = f"printf 0123456789; {wait_file_step(more)}; printf abc; {wait_file_step(end)}"
    run = assignment(5, job("a", steps))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    t, errors = run_both(reporter, executor)
    fake_primary.wait_for(lambda: fake_primary.log(5, "a") == b"0123456789")
    with fake_primary.lock:  # the primary "loses" bytes: the next chunk gets a 416
        del fake_primary.logs[(5, "a")][4:]
    more.touch()
    fake_primary.wait_for(lambda: fake_primary.log(5, "a") == b"0123456789abc")
    with fake_primary.lock:  # and again: the final status gets 409 log_incomplete
        del fake_primary.logs[(5, "a")][2:]
    end.touch()
    t.join(15)
    assert not errors
    assert fake_primary.log(5, "a") == b"0123456789abc"
    assert fake_primary.states(5, "a") == ["running", "success"]


def test_stale_start_runs_nothing(agent_home, fake_primary, tmp_path):
    run = assignment(6, job("a", "touch ran"))
    fake_primary.stale.add((6, 1))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    assert reporter.start_run() is False
    assert not (tmp_path / "ws" / "ran").exists()


def test_stale_during_the_run_stops_delivery(agent_home, fake_primary, tmp_path):
    run = assignment(7, job("a", "echo $$ > sh.pid; while true; do echo tick; sleep 0.1; done"))
    reporter, executor, _ = setup(agent_home, fake_primary, run, tmp_path)
    t, errors = run_both(reporter, executor)
    fake_primary.wait_for(lambda: b"tick" in fake_primary.log(7, "a"))
    fake_primary.stale.add((7, 1))
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], Stale)
    executor.cancel()  # what agent.runner does on Stale
    pid = int((tmp_path / "ws" / "sh.pid").read_text())
    fake_primary.wait_for(
        lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    )
    assert fake_primary.finished == []
