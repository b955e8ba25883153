"""The systemd unit the role renders is valid (`systemd-analyze verify`) and hardened."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture
def unit(tmp_path) -> Path:
    if shutil.which("ansible-playbook", path=str(BIN)) is None:
        pytest.skip("ansible-core is not installed in the venv")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    agent = venv / "bin" / "cifleet-agent"
    agent.write_text("#!/bin/sh\nexit 0\n")
    agent.chmod(0o755)
    (tmp_path / "home").mkdir()
    dest = tmp_path / "cifleet-agent.service"
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(REPO / "tests" / "ansible" / "render_unit.yml"),
            "-e",
            f"unit_dest={dest} cifleet_worker_venv={venv} cifleet_worker_home={tmp_path / 'home'}"
            " cifleet_worker_stop_timeout=900",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


def test_unit_has_the_hardening_and_drain_settings(unit):
    text = unit.read_text()
    lines = set(text.splitlines())
    for expected in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={unit.parent / 'home'}",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        "TimeoutStopSec=900",
        "StateDirectory=cifleet-job-uids",  # the job uid registry, writable under strict
        "StateDirectoryMode=0700",
        "RestartPreventExitStatus=3 5",
        f"ExecStart={unit.parent / 'venv/bin/cifleet-agent'} run --home {unit.parent / 'home'}",
    ):
        assert expected in lines, expected
    # Root is the default; a User= line with NoNewPrivileges=yes would make systemd 255 and
    # later drop CAP_SETUID (the container tests run such a host, Debian 13).
    assert not [line for line in lines if line.startswith(("User=", "Group="))]


def test_unit_passes_systemd_analyze_verify(unit):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    result = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # Complaints about the machine (no systemd running here) are not about the unit file.
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit.name) in line or "cifleet" in line
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr
