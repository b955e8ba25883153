"""add-worker.yml on real hosts (systemd containers) with the role's defaults: the unit,
the `cifleet` user, /opt/cifleet and /var/lib/cifleet; hosts with Python 3.11 and 3.13."""

import hashlib
import json
import subprocess

import pytest
from fleet import wait_for
from playbook_fleet import FLEET, recap

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def added(fleet):
    """The first add-worker run (the tests below build on its result)."""
    return fleet.playbook("add-worker.yml")


def test_add_worker_registers_and_starts_the_unit_on_every_host(fleet, added):
    for name, (_, tags) in FLEET.items():
        host = fleet.hosts[name]
        worker = wait_for(
            lambda n=name: (w := fleet.primary.worker(n)) and w["state"] == "active" and w,
            30,
            f"worker {name} to be active",
        )
        assert sorted(worker["tags"]) == sorted(tags)
        assert worker["slots"] == 1 and not worker["draining"]
        assert host.ssh("systemctl is-active cifleet-agent") == "active\n"
        assert host.ssh("systemctl is-enabled cifleet-agent") == "enabled\n"
        # The agent runs as root, with the capability to run jobs as uids of their own (below).
        pid = host.ssh("systemctl show -p MainPID --value cifleet-agent").strip()
        assert host.ssh(f"ps -o user= -p {pid}") == "root\n"
        cap_eff = int(host.ssh(f"grep CapEff /proc/{pid}/status").split()[1], 16)
        assert cap_eff & (1 << 6) and cap_eff & (1 << 7), "CAP_SETGID, CAP_SETUID"
        # The default paths, owned as the role says: the home only passable for others.
        assert host.ssh(
            "stat -c '%U %G %a %n' /opt/cifleet /etc/cifleet /var/lib/cifleet /var/log/cifleet"
            " /var/lib/cifleet/worker.key /etc/cifleet/ca.pem"
        ).splitlines() == [
            "root root 755 /opt/cifleet",
            "root root 755 /etc/cifleet",
            "root root 711 /var/lib/cifleet",
            "root root 750 /var/log/cifleet",
            "root root 600 /var/lib/cifleet/worker.key",
            "root root 644 /etc/cifleet/ca.pem",
        ]
        # The venv has the agent and no pip (the archive's pip wheel installed it).
        assert host.ssh("/opt/cifleet/venv/bin/cifleet-agent --version").split()[1] == (
            _source_version()
        )
        assert host.ssh("test -e /opt/cifleet/venv/bin/pip || echo none") == "none\n"
    # No temporary secret file, anywhere: register read the secret on its stdin.
    for name in FLEET:
        assert fleet.hosts[name].ssh("find / -xdev -name 'cifleet-secret*'") == ""


def test_each_python_gets_its_own_wheelhouse(fleet, added):
    """Debian 12 (3.11) and Debian 13 (3.13): one archive each, built once, and each host
    installed the one for its interpreter (cffi has a wheel per CPython version)."""
    archives = sorted((fleet.root / "wheelhouse").glob("cifleet-*.tar"))
    assert [a.name.split("-")[2] for a in archives] == ["cp311", "cp313"], archives
    by_tag = {a.name.split("-")[2]: a for a in archives}
    for name, tag, python in (
        ("w1", "cp311", "3.11"),
        ("w2", "cp311", "3.11"),
        ("w3", "cp313", "3.13"),
    ):
        host = fleet.hosts[name]
        on_host = host.ssh("sha256sum /opt/cifleet/wheelhouse.tar").split()[0]
        assert on_host == hashlib.sha256(by_tag[tag].read_bytes()).hexdigest(), name
        cffi = host.ssh(
            "ls /opt/cifleet/venv/lib/python3*/site-packages | grep '^_cffi_backend'"
        ).strip()
        assert f"cpython-{tag[2:]}-" in cffi, (name, cffi)
        version = "import sys; print(*sys.version_info[:2], sep='.')"
        assert host.ssh(f'/opt/cifleet/venv/bin/python -c "{version}"') == f"{python}\n"


def test_a_tagged_pipeline_runs_on_its_host_as_the_job_user_who_cannot_read_the_key(fleet, added):
    fleet.primary.pipeline(
        "name: on-gamma\ntags: [gamma]\njobs:\n  - name: where\n    steps:\n"
        '      - "cat /etc/hostname"\n'
        '      - "id -u"\n'
        '      - "cat /var/lib/cifleet/worker.key || echo no key"\n'
        '      - "ls /var/lib/cifleet || echo no listing"\n'
    )
    run = fleet.primary.wait_run(fleet.primary.trigger("on-gamma"), timeout=60)
    assert run["state"] == "success", run
    assert run["worker_name"] == "w3"
    # The job ran as a uid of the job range (the workspace is that uid's), not as the
    # agent (root), and could neither read the worker's key nor list the agent home.
    host = fleet.hosts["w3"]
    uid = int(host.ssh("stat -c %u /var/lib/cifleet/workspaces/on-gamma"))
    assert 65536 <= uid <= 66535
    assert fleet.primary.job_log(run["id"], "where") == (
        b"w3\n%d\ncat: /var/lib/cifleet/worker.key: Permission denied\nno key\n"
        b"ls: cannot open directory '/var/lib/cifleet': Permission denied\nno listing\n" % uid
    )


def test_a_second_run_changes_nothing(fleet, added):
    result = fleet.playbook("add-worker.yml")
    hosts = recap(result.stdout)
    assert set(hosts) == set(FLEET)
    for name, counts in hosts.items():
        assert counts["changed"] == 0 and counts["failed"] == 0, (name, result.stdout[-5000:])


# Agent URLs of other primaries of the fleet (none serves there: the agent moves to one
# only when its own primary cannot be reached, which these tests never make happen).
OTHER_PRIMARIES = ["https://ci2.example:8444", "https://ci3.example:8444"]


def test_a_revoked_worker_registers_again_with_the_other_primaries(fleet, added):
    host = fleet.hosts["w2"]
    old_cert = host.ssh("cat /var/lib/cifleet/worker.crt")
    old_id = fleet.primary.worker("w2")["id"]
    fleet.primary.client.json("DELETE", "/api/v1/workers/w2")
    # The agent stops for good (exit 3) when the primary no longer knows it.
    wait_for(
        lambda: host.ssh("systemctl is-active cifleet-agent", check=False) == "failed\n",
        30,
        "the removed worker's agent to stop",
    )
    # The secret from a variable this time (as from Ansible Vault), in an extra-vars file on
    # the controller; verbose, so the secret test below also covers what -vv shows.
    secret_vars = fleet.root / "secret-vars.yml"
    # cifleet_worker_primaries too: the unit (rewritten, so the agent restarts) passes them.
    secret_vars.write_text(
        f"cifleet_worker_secret_source: variable\ncifleet_worker_secret: {fleet.primary.secret()}\n"
        f"cifleet_worker_primaries: {json.dumps(OTHER_PRIMARIES)}\n"
    )
    secret_vars.chmod(0o600)
    result = fleet.playbook("add-worker.yml", "--limit", "w2", "-vv", "-e", f"@{secret_vars}")
    assert recap(result.stdout)["w2"]["changed"] > 0
    worker = wait_for(
        lambda: (w := fleet.primary.worker("w2")) and w["state"] == "active" and w,
        30,
        "w2 to be active again",
    )
    assert worker["id"] != old_id
    assert host.ssh("cat /var/lib/cifleet/worker.crt") != old_cert
    assert sorted(worker["tags"]) == sorted(FLEET["w2"][1])
    assert host.ssh("systemctl is-active cifleet-agent") == "active\n"
    flag = f"--primaries {','.join(OTHER_PRIMARIES)}"
    [exec_start] = [
        line
        for line in host.ssh("cat /etc/systemd/system/cifleet-agent.service").splitlines()
        if line.startswith("ExecStart=")
    ]
    assert exec_start.endswith(f" run --home /var/lib/cifleet {flag}"), exec_start
    pid = host.ssh("systemctl show -p MainPID --value cifleet-agent").strip()
    assert flag in host.ssh(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    # The running agent took them: it names every primary it may poll, its own first.
    polling = f"polling {fleet.primary.url.rsplit(':', 1)[0]}:{fleet.primary.agent_port} or "
    polling += " or ".join(OTHER_PRIMARIES)
    wait_for(
        lambda: polling in host.ssh("journalctl --no-pager -u cifleet-agent"),
        30,
        "the agent's start line naming the other primaries",
    )


def test_the_secret_is_nowhere_in_output_logs_or_host_files(fleet, added):
    """Runs after the other tests of this module: it reads everything they produced."""
    secret = fleet.primary.secret()
    output = (fleet.root / "ansible-output.log").read_text()
    # Every playbook run so far, the verbose re-registration included.
    assert output.count("PLAY RECAP") >= 3 and "-vv" in output
    assert secret not in output
    for name in FLEET:
        host = fleet.hosts[name]
        # Everything the host has written since it was made is in its overlay's upper folder.
        found = subprocess.run(
            ["grep", "-rlF", "--", secret, str(host.root / "upper")],
            capture_output=True,
            text=True,
        )
        assert found.stdout == "", f"the secret is in {found.stdout}"
        assert secret not in host.ssh("journalctl --no-pager -u cifleet-agent")


def _source_version() -> str:
    from agent import __version__

    return __version__


def test_the_inventory_leaves_the_role_at_its_defaults(fleet):
    """What these tests exercise is what a user gets: no path, user or service manager set."""
    text = fleet.inventory.read_text()
    for variable in ("_install_dir", "_home", "_user", "_service_manager", "_python", "_venv"):
        assert f"cifleet_worker{variable}" not in text
    assert json.dumps(FLEET["w1"][1]) in text
