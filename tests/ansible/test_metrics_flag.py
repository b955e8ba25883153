"""The role passes `--metrics-listen` to the agent when cifleet_worker_metrics_listen is set,
in the systemd unit and in the daemon command of hosts without systemd; likewise
`--workspace-max-bytes` for cifleet_worker_workspace_max_bytes, and `--primaries` (the list
joined with commas) for cifleet_worker_primaries. On a real host: test_add_worker.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def playbook(name: str, extra_vars: str) -> None:
    if shutil.which("ansible-playbook", path=str(BIN)) is None:
        pytest.skip("ansible-core is not installed in the venv")
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
        + [str(REPO / "tests" / "ansible" / name), "-e", extra_vars],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
            "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_starts_the_agent_with_the_listener(tmp_path):
    unit = tmp_path / "cifleet-agent.service"
    playbook(
        "render_unit.yml",
        f"unit_dest={unit} cifleet_worker_venv=/opt/v cifleet_worker_home=/var/lib/c"
        " cifleet_worker_metrics_listen=127.0.0.1:9252",
    )
    assert (
        "ExecStart=/opt/v/bin/cifleet-agent run --home /var/lib/c --metrics-listen 127.0.0.1:9252"
        in unit.read_text().splitlines()
    )


def test_the_unit_passes_the_workspace_cap(tmp_path):
    unit = tmp_path / "cifleet-agent.service"
    playbook(
        "render_unit.yml",
        f"unit_dest={unit} cifleet_worker_venv=/opt/v cifleet_worker_home=/var/lib/c"
        " cifleet_worker_workspace_max_bytes=20G",
    )
    assert (
        "ExecStart=/opt/v/bin/cifleet-agent run --home /var/lib/c --workspace-max-bytes 20G"
        in unit.read_text().splitlines()
    )


PRIMARIES = ["https://ci2.example:8444", "https://[fd00::3]:8444"]


# A list, or one comma-separated string (an INI inventory's value), as Ansible's list
# arguments accept.
@pytest.mark.parametrize("primaries", [PRIMARIES, " , ".join(PRIMARIES)])
def test_the_unit_passes_the_other_primaries(tmp_path, primaries):
    unit = tmp_path / "cifleet-agent.service"
    extra = {"unit_dest": str(unit), "cifleet_worker_venv": "/opt/v"}
    extra |= {"cifleet_worker_home": "/var/lib/c", "cifleet_worker_primaries": primaries}
    playbook("render_unit.yml", json.dumps(extra))
    assert (
        "ExecStart=/opt/v/bin/cifleet-agent run --home /var/lib/c"
        " --primaries https://ci2.example:8444,https://[fd00::3]:8444"
        in unit.read_text().splitlines()
    )


@pytest.mark.parametrize("listen", ["[::1]:9252", ""])
def test_the_daemon_gets_the_flag_only_when_it_is_set(tmp_path, listen):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    argv_file = tmp_path / "argv"
    agent = venv / "bin" / "cifleet-agent"  # a stand-in that records how it was started
    agent.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {argv_file}\n')
    agent.chmod(0o755)
    # JSON, so that the list is a list (key=value pairs give strings).
    extra = {
        "cifleet_worker_service_manager": "none",
        "cifleet_worker_venv": str(venv),
        "cifleet_worker_home": f"{tmp_path}/home",
        "cifleet_worker_pidfile": f"{tmp_path}/agent.pid",
        "cifleet_worker_log_dir": str(tmp_path),
        "cifleet_worker_metrics_listen": listen,
        "cifleet_worker_workspace_max_bytes": "500M" if listen else "",
        "cifleet_worker_primaries": PRIMARIES if listen else [],
    }
    playbook("start_daemon.yml", json.dumps(extra))
    expected = ["run", "--daemon", "--home", f"{tmp_path}/home", "--pidfile"]
    expected += [f"{tmp_path}/agent.pid", "--log-file", f"{tmp_path}/agent.log"]
    expected += ["--metrics-listen", listen] if listen else []
    expected += ["--primaries", ",".join(PRIMARIES)] if listen else []
    expected += ["--workspace-max-bytes", "500M"] if listen else []
    assert argv_file.read_text().splitlines() == expected
