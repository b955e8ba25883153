"""add-worker.yml against three real SSH hosts and a real primary."""

import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import recap
from fleet import wait_for

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def added(lab):
    """The first add-worker run (the tests below build on its result)."""
    result = lab.playbook("add-worker.yml")
    return result


def test_add_worker_registers_every_host_active_with_its_tags(lab, added):
    for host in lab.hosts.values():
        worker = wait_for(
            lambda h=host: (w := lab.primary.worker(h.name)) and w["state"] == "active" and w,
            30,
            f"worker {host.name} to be active",
        )
        assert sorted(worker["tags"]) == sorted(host.tags)
        assert worker["slots"] == 1
        assert not worker["draining"]
        assert host.agent_pid() is not None
        assert (host.home / "worker.crt").is_file()
        assert (host.home / "worker.key").stat().st_mode & 0o077 == 0


def test_a_tagged_pipeline_runs_on_the_host_with_that_tag(lab, added):
    lab.primary.pipeline(
        "name: on-beta\ntags: [beta]\njobs:\n  - name: hello\n"
        '    steps: ["echo hi", "id -u", "cat ../../worker.key || echo no key"]\n'
    )
    run = lab.primary.wait_run(lab.primary.trigger("on-beta"), timeout=60)
    assert run["state"] == "success", run
    assert run["worker_name"] == "w3"
    # The agent runs as root; the job as a uid of its own, which cannot read the agent's key.
    workspace = lab.hosts["w3"].home / "workspaces" / "on-beta"
    uid = workspace.stat().st_uid
    assert 65536 <= uid <= 66535
    log = lab.primary.job_log(run["id"], "hello")
    assert log == b"hi\n%d\ncat: ../../worker.key: Permission denied\nno key\n" % uid


def test_a_second_run_changes_nothing(lab, added):
    result = lab.playbook("add-worker.yml")
    hosts = recap(result.stdout)
    assert set(hosts) == set(lab.hosts)
    for name, counts in hosts.items():
        assert counts["changed"] == 0, (name, result.stdout[-5000:])
        assert counts["failed"] == 0


def test_a_revoked_worker_registers_again(lab, added):
    host = lab.hosts["w4"]
    old_cert = (host.home / "worker.crt").read_bytes()
    old_id = lab.primary.worker("w4")["id"]
    lab.primary.client.json("DELETE", "/api/v1/workers/w4")
    # The secret from a variable this time (as from Ansible Vault), in an extra-vars file on
    # the controller; verbose, so the secret test below also covers what -vv shows.
    secret_vars = lab.root / "secret-vars.yml"
    secret_vars.write_text(
        f"cifleet_worker_secret_source: variable\ncifleet_worker_secret: {lab.primary.secret()}\n"
    )
    secret_vars.chmod(0o600)
    result = lab.playbook("add-worker.yml", "--limit", "w4", "-vv", "-e", f"@{secret_vars}")
    assert recap(result.stdout)["w4"]["changed"] > 0
    worker = wait_for(
        lambda: (w := lab.primary.worker("w4")) and w["state"] == "active" and w,
        30,
        "w4 to be active again",
    )
    assert worker["id"] != old_id
    assert (host.home / "worker.crt").read_bytes() != old_cert
    assert sorted(worker["tags"]) == sorted(host.tags)


def test_the_secret_is_nowhere_in_output_logs_or_host_files(lab, added):
    """Runs after the other tests of this module: it reads everything they produced."""
    secret = lab.primary.secret()
    output = (lab.root / "ansible-output.log").read_text()
    # Every playbook run so far, the verbose re-registration included.
    assert output.count("PLAY RECAP") >= 3 and "-vv" in output
    assert secret not in output
    found = subprocess.run(
        ["grep", "-rlF", "--", secret, str(lab.root / "hosts")], capture_output=True, text=True
    )
    assert found.stdout == "", f"the secret is in {found.stdout}"
    for host in lab.hosts.values():
        assert secret not in host.log.read_text()
    # The temporary secret files are gone too.
    assert not list(Path(tempfile.gettempdir()).glob("cifleet-secret.*"))
