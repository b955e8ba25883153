"""The role's preflight on real hosts: a host it cannot serve fails before anything is
changed, with a message that says what to do. `bare` runs sshd as PID 1 (no systemd),
`old` is Debian 11 (Python 3.9); both then show the paths that do work."""

import subprocess

import pytest
from fleet import BIN, wait_for
from playbook_fleet import recap
from ports import reserve_port

pytestmark = pytest.mark.ansible

# What add-worker.yml would create on a host.
FOOTPRINT = (
    "/opt/cifleet /etc/cifleet /var/lib/cifleet /var/log/cifleet"
    " /etc/systemd/system/cifleet-agent.service"
)


def _untouched(fleet, name: str) -> None:
    host = fleet.hosts[name]
    assert host.ssh(f"ls -d {FOOTPRINT} 2>/dev/null || true") == ""
    assert fleet.primary.worker(name) is None


HOST_CHECK = "Check that the host can run the agent before changing anything."


def _fails_in_preflight(fleet, name: str, *args: str, task: str = HOST_CHECK) -> str:
    result = fleet.playbook(
        "add-worker.yml", *args, inventory=fleet.inventory_for([name]), check=False
    )
    assert result.returncode == 2, result.stdout[-4000:]
    counts = recap(result.stdout)[name]
    assert counts["failed"] == 1 and counts["changed"] == 0, counts
    # The task that failed is the one named, and nothing after it ran.
    failed_in = result.stdout.rsplit("fatal:", 1)[0].rsplit("TASK [", 1)[1].split("]")[0]
    assert failed_in == f"cifleet_worker : {task}"
    _untouched(fleet, name)
    return result.stdout


def test_a_host_without_systemd_fails_first_and_says_what_to_do(fleet):
    out = _fails_in_preflight(fleet, "bare")
    assert (
        "bare: cifleet_worker_service_manager is systemd, but systemd does not run this host"
        " (PID 1 is sshd)."
    ) in out
    assert "set cifleet_worker_service_manager=none" in out


def test_a_host_whose_python_is_too_old_fails_first_and_says_what_to_do(fleet):
    out = _fails_in_preflight(fleet, "old")
    assert (
        "old: /usr/bin/python3 is Python 3.9.2; the agent needs 3.11 or later. Install a newer"
        " Python"
    ) in out
    # Only that: the host runs systemd and reaches the primary.
    assert "systemd does not run" not in out and "cannot reach" not in out


def test_a_primary_the_host_cannot_reach_fails_first(fleet):
    # A port of the primary's address reserved for nobody: connecting to it is refused.
    with reserve_port(fleet.primary.host) as nobody:
        url = f"https://{fleet.primary.host}:{nobody.port}"
        out = _fails_in_preflight(
            fleet,
            "bare",
            "-e",
            "cifleet_worker_service_manager=none",
            "-e",
            f"cifleet_worker_primary_url={url}",
        )
    assert f"bare: cannot reach the primary at {url}: [Errno 111] Connection refused." in out
    assert "systemd does not run" not in out


def test_another_primary_that_is_not_an_agent_url_fails_first(fleet):
    # One comma-separated string, as an INI inventory gives it; its second URL is http.
    out = _fails_in_preflight(
        fleet,
        "bare",
        "-e",
        "cifleet_worker_primaries=https://ci2.example:8444,http://ci3.example:8444",
        task="Check the primary URL, the worker name, slots, tags, job uids and the secret's"
        " source.",
    )
    assert "every one of cifleet_worker_primaries an agent URL, https://HOST:PORT." in out


def test_a_token_that_is_not_an_admin_s_fails_before_any_change(fleet, tmp_path):
    created = subprocess.run(
        [
            str(BIN / "cifleet-primary"),
            "token",
            "create",
            "--name",
            "preflight",
            "--role",
            "viewer",
            "--data-dir",
            str(fleet.primary.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token_file = tmp_path / "viewer.token"
    token_file.write_text(created.stdout.strip())
    out = _fails_in_preflight(
        fleet,
        "bare",
        "-e",
        "cifleet_worker_service_manager=none",
        "-e",
        f"cifleet_worker_admin_token_file={token_file}",
        task="Report an admin token the primary refused.",
    )
    assert f"The primary refused the admin token in {token_file} (HTTP 403)" in out


def test_without_systemd_the_agent_runs_as_a_daemon(fleet):
    """The same host with service manager `none`: installed, registered, running."""
    inventory = fleet.inventory_for(["bare"])
    # --check says what it would change and changes nothing.
    dry = fleet.playbook(
        "add-worker.yml",
        "--check",
        "-e",
        "cifleet_worker_service_manager=none",
        inventory=inventory,
    )
    assert recap(dry.stdout)["bare"]["changed"] > 0
    _untouched(fleet, "bare")
    first = fleet.playbook(
        "add-worker.yml", "-e", "cifleet_worker_service_manager=none", inventory=inventory
    )
    assert recap(first.stdout)["bare"]["changed"] > 0
    wait_for(
        lambda: (w := fleet.primary.worker("bare")) and w["state"] == "active", 30, "bare active"
    )
    host = fleet.hosts["bare"]
    pid = host.ssh("cat /run/cifleet-agent.pid").strip()
    assert host.ssh(f"cat /proc/{pid}/comm").strip().startswith("cifleet-agent")
    # Its jobs run as uids of their own, as under systemd: bare is the one untagged worker.
    fleet.primary.pipeline(
        "name: untagged\njobs:\n  - name: who\n"
        '    steps: ["id -u", "cat /var/lib/cifleet/worker.key || echo no key"]\n'
    )
    run = fleet.primary.wait_run(fleet.primary.trigger("untagged"), timeout=60)
    assert run["state"] == "success" and run["worker_name"] == "bare", run
    uid = int(host.ssh("stat -c %u /var/lib/cifleet/workspaces/untagged"))
    assert 65536 <= uid <= 66535
    assert fleet.primary.job_log(run["id"], "who") == (
        b"%d\ncat: /var/lib/cifleet/worker.key: Permission denied\nno key\n" % uid
    )
    again = fleet.playbook(
        "add-worker.yml", "-e", "cifleet_worker_service_manager=none", inventory=inventory
    )
    assert recap(again.stdout)["bare"]["changed"] == 0
    assert host.ssh("cat /run/cifleet-agent.pid").strip() == pid
    removed = fleet.playbook(
        "remove-worker.yml",
        "-e",
        "cifleet_worker_service_manager=none",
        "-e",
        "cifleet_worker_remove_every_host=true",
        inventory=inventory,
    )
    assert recap(removed.stdout)["bare"]["changed"] > 0
    assert fleet.primary.worker("bare") is None
    assert host.ssh(f"test -e /proc/{pid} || echo stopped") == "stopped\n"
