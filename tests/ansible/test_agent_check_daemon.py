"""`cifleet-agent check` exit codes and `cifleet-agent run --daemon`: what the role relies on."""

import json
import os
import signal
import subprocess

from fleet import BIN, init_primary, process_gone, register_agent, wait_for


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "cifleet-agent"), *args], capture_output=True, text=True, timeout=60
    )


def test_check_says_registered_refused_not_registered_or_unreachable(primary, fleet_root):
    home = fleet_root / "w1"
    assert agent("check", "--home", str(home)).returncode == 4

    assert register_agent(primary, fleet_root, "w1", "linux,gpu", 2).returncode == 0
    ok = agent("check", "--home", str(home))
    assert ok.returncode == 0, ok.stderr
    record = json.loads(ok.stdout)
    assert record["name"] == "w1"
    assert sorted(record["tags"]) == ["gpu", "linux"]
    assert record["slots"] == 2 and record["draining"] is False

    primary.client.json("DELETE", "/api/v1/workers/w1")
    refused = agent("check", "--home", str(home))
    assert refused.returncode == 3
    assert "no longer knows" in refused.stderr

    primary.stop()
    down = agent("check", "--home", str(home))
    assert down.returncode == 2
    assert "cannot reach" in down.stderr


def test_check_says_an_expired_certificate_is_refused(tmp_path):
    # Certificates valid for about a second.
    p = init_primary(tmp_path, "--primary-worker-slots", "0", "--worker-cert-days", "0.00001")
    try:
        p.start()
        assert register_agent(p, tmp_path, "w1").returncode == 0
        # Accepted until the certificate expires, a second or so after it was issued.
        result = wait_for(
            lambda: (r := agent("check", "--home", str(tmp_path / "w1"))).returncode and r,
            30,
            "the certificate to expire",
        )
        assert result.returncode == 3
        assert "expired" in result.stderr
    finally:
        p.close()


def test_run_daemon_writes_a_pidfile_and_starts_only_once(primary, fleet_root):
    assert register_agent(primary, fleet_root, "w1").returncode == 0
    home, pidfile, log = fleet_root / "w1", fleet_root / "agent.pid", fleet_root / "agent.log"
    args = (
        "run",
        "--daemon",
        "--home",
        str(home),
        "--pidfile",
        str(pidfile),
        "--log-file",
        str(log),
    )
    first = agent(*args)
    assert first.returncode == 0, first.stderr
    pid = int(pidfile.read_text())
    try:
        wait_for(lambda: (w := primary.worker("w1")) and w["state"] == "active", 30, "w1 active")
        second = agent(*args)
        assert second.returncode == 0
        assert "already running" in second.stdout
        assert int(pidfile.read_text()) == pid
    finally:
        os.kill(pid, signal.SIGTERM)  # drains and exits
    wait_for(lambda: not pidfile.exists(), 30, "the daemon to exit and remove its pidfile")
    wait_for(lambda: process_gone(pid), 30, "the daemon to end")
    assert log.read_text()


def test_run_daemon_reports_a_bad_home_before_detaching(fleet_root):
    result = agent(
        "run",
        "--daemon",
        "--home",
        str(fleet_root / "nothing"),
        "--pidfile",
        str(fleet_root / "p.pid"),
        "--log-file",
        str(fleet_root / "l.log"),
    )
    assert result.returncode == 2
    assert "not registered" in result.stderr
    assert not (fleet_root / "p.pid").exists()
