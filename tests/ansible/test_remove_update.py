"""update-worker.yml and remove-worker.yml on real hosts: drain and flood, a rolling upgrade
across a real version bump with a job running, and removal.

They run after test_add_worker.py (file order) on the session's fleet; w2 is removed last.
"""

import shutil
import subprocess

import pytest
from fleet import BIN, AgentPeer, wait_for
from playbook_fleet import FLEET, REPO, recap

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def workers_added(fleet):
    # test_add_worker.py normally did this already; run it only when needed (-k, -x).
    if not all((w := fleet.primary.worker(name)) and w["state"] == "active" for name in FLEET):
        fleet.playbook("add-worker.yml")
    for name in FLEET:
        wait_for(
            lambda n=name: (w := fleet.primary.worker(n)) and w["state"] == "active",
            30,
            f"{name} to be active",
        )


def test_update_worker_drains_and_floods(fleet, workers_added):
    result = fleet.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=true")
    assert recap(result.stdout)["w2"]["changed"] == 1
    assert fleet.primary.worker("w2")["draining"] is True
    assert fleet.primary.worker("w3")["draining"] is False
    again = fleet.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=true")
    assert recap(again.stdout)["w2"]["changed"] == 0
    fleet.playbook("update-worker.yml", "--limit", "w2", "-e", "cifleet_worker_drain=false")
    worker = fleet.primary.worker("w2")
    assert worker["draining"] is False
    assert worker["state"] == "active"


def _bumped_source(tmp_path, version: str):
    """A copy of the source tree whose agent (and primary) says `version`."""
    source = tmp_path / "source"
    for part in ("agent", "primary"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    init = source / "agent" / "__init__.py"
    text = init.read_text()
    old = text.split('__version__ = "')[1].split('"')[0]
    init.write_text(text.replace(f'__version__ = "{old}"', f'__version__ = "{version}"'))
    return source


def _serve_from(source, tmp_path) -> list[str]:
    """A command that runs the primary of `source` (a venv with this one's dependencies and
    that tree on its path, ahead of everything)."""
    venv = tmp_path / "primary-venv"
    subprocess.run([str(BIN / "python"), "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    ours = next(BIN.parent.glob("lib/python3*/site-packages"))
    (site / "00-cifleet-source.pth").write_text(f"{source}\n{ours}\n")
    # -P: not the working directory (this checkout) first on the path.
    return [str(venv / "bin" / "python"), "-P", "-m", "primary"]


def test_a_rolling_upgrade_to_a_new_version_lets_the_running_job_finish(
    fleet, workers_added, tmp_path
):
    """The primary is upgraded first, then update-worker.yml rolls the workers one at a
    time while a job runs on w1: w1 drains, the job finishes (the test lets it go only once
    w1 is draining), then w1 gets the new agent. No run fails; every worker runs the new
    version afterwards. The inventory also gives w3 new tags and slots."""
    from agent import __version__ as old_version

    new_version = f"{old_version}.post7"
    source = _bumped_source(tmp_path, new_version)
    w1 = fleet.hosts["w1"]
    gate = w1.merged / "srv" / "release"
    gate.unlink(missing_ok=True)
    fleet.primary.pipeline(
        "name: long\ntags: [alpha]\njobs:\n  - name: wait\n    steps:\n"
        '      - "echo started"\n'
        '      - "while [ ! -e /srv/release ]; do sleep 0.1; done"\n'
        '      - "echo finished"\n'
    )
    run_id = fleet.primary.trigger("long")
    wait_for(lambda: fleet.log(run_id, "wait") == b"started\n", 60, "the job to start")

    # The primary first: same data dir, the new version's code.
    fleet.primary.stop()
    fleet.primary.command = _serve_from(source, tmp_path)
    fleet.primary.start()
    assert fleet.primary.client.json("GET", "/healthz")["version"] == new_version

    _warm_wheelhouse(fleet, source, new_version)
    inventory = fleet.inventory_for(
        list(FLEET),
        tmp_path / "inventory",
        w3={"cifleet_worker_tags": '\'["gamma", "big"]\'', "cifleet_worker_slots": 3},
    )
    proc = fleet.start_playbook(
        "update-worker.yml", "-e", f"cifleet_worker_source_dir={source}", inventory=inventory
    )
    try:
        wait_for(
            lambda: proc.poll() is not None or fleet.primary.worker("w1")["draining"],
            180,
            "w1 to drain for its upgrade",
        )
        assert proc.poll() is None, "update-worker.yml ended before w1 drained"
        assert fleet.primary.run(run_id)["state"] == "running"
    finally:
        gate.parent.mkdir(exist_ok=True)
        gate.touch()
        output = fleet.finish_playbook(proc, "update-worker.yml")
    assert set(recap(output)) == set(FLEET)

    run = fleet.primary.run(run_id)
    assert run["state"] == "success", run
    assert [a["outcome"] for a in run["attempts"]] == ["success"]
    assert fleet.primary.job_log(run_id, "wait") == b"started\nfinished\n"
    for name in FLEET:
        host = fleet.hosts[name]
        installed = host.ssh("/opt/cifleet/venv/bin/cifleet-agent --version").split()[1]
        assert installed == new_version, name
        assert host.ssh("systemctl is-active cifleet-agent", check=False) == "active\n", host.ssh(
            "journalctl --no-pager -u cifleet-agent | tail -20"
        )
        # The record shows the version the agent polls with (its first poll may come after
        # the playbook's last step).
        worker = wait_for(
            lambda n=name: (w := fleet.primary.worker(n))["version"] == new_version and w,
            30,
            f"{name} to poll with {new_version}",
        )
        assert worker["state"] == "active" and not worker["draining"], worker
    w3 = fleet.primary.worker("w3")
    assert sorted(w3["tags"]) == ["big", "gamma"] and w3["slots"] == 3
    # New work runs on the new version.
    again = fleet.primary.wait_run(fleet.primary.trigger("long"), timeout=60)
    assert again["state"] == "success", again
    # The session's inventory again, from the new source: it is the primary's version now.
    fleet.use_source(source)
    fleet.playbook("update-worker.yml", "--limit", "w3")
    assert sorted(fleet.primary.worker("w3")["tags"]) == sorted(FLEET["w3"][1])


def test_remove_worker_refuses_every_host_unless_told_so(fleet, workers_added):
    result = fleet.playbook("remove-worker.yml", check=False)
    assert result.returncode != 0
    assert "This would remove all 3 workers of the inventory" in result.stdout
    assert all(fleet.primary.worker(name)["state"] == "active" for name in FLEET)
    for name in FLEET:
        assert fleet.hosts[name].ssh("systemctl is-active cifleet-agent") == "active\n"


def test_remove_worker_stops_disables_and_wipes_and_the_certificate_is_refused(
    fleet, workers_added, tmp_path
):
    host = fleet.hosts["w2"]
    key_pem = host.ssh("cat /var/lib/cifleet/worker.key")
    cert_pem = host.ssh("cat /var/lib/cifleet/worker.crt")
    (tmp_path / "old.crt").write_text(cert_pem)
    (tmp_path / "old.key").write_text(key_pem)
    (tmp_path / "old.key").chmod(0o600)
    old = AgentPeer(fleet.primary, tmp_path / "old.crt", tmp_path / "old.key")
    assert old.call("POST", "/agent/v1/worker", {})[0] == 200

    result = fleet.playbook("remove-worker.yml", "--limit", "w2")
    assert recap(result.stdout)["w2"]["changed"] > 0

    assert fleet.primary.worker("w2") is None
    assert {w["name"] for w in fleet.primary.workers()} == {"w1", "w3"}
    # The unit is stopped, disabled and gone; systemd has forgotten it.
    assert host.ssh("systemctl is-active cifleet-agent", check=False) == "inactive\n"
    assert host.ssh("test -e /etc/systemd/system/cifleet-agent.service || echo gone") == "gone\n"
    assert "could not be found" in host.ssh("systemctl status cifleet-agent 2>&1", check=False)
    assert host.ssh("pgrep -x cifleet-agent || echo none") == "none\n"
    # No key, certificate or secret left anywhere the host wrote to.
    secret = fleet.primary.secret()
    key_body = "".join(key_pem.splitlines()[1:-1])
    cert_body = "".join(cert_pem.splitlines()[1:-1])
    for needle in (secret, key_body[:48], cert_body[:48]):
        assert not _grep_host(host, needle), needle
    for name in ("config.json", "worker.key", "worker.crt", "ca.pem"):
        assert host.ssh(f"test -e /var/lib/cifleet/{name} || echo gone") == "gone\n", name
    assert host.ssh("test -e /etc/cifleet || echo gone") == "gone\n"
    # The old certificate is refused on the agent port.
    try:
        status = old.call("POST", "/agent/v1/worker", {})[0]
    except OSError as e:  # the TLS handshake itself may be refused
        status = f"refused: {e}"
    assert status == 403 or str(status).startswith("refused"), status

    # The install stays (remove_all is false); a second removal changes nothing.
    assert host.ssh("test -x /opt/cifleet/venv/bin/cifleet-agent && echo kept") == "kept\n"
    again = fleet.playbook("remove-worker.yml", "--limit", "w2")
    assert recap(again.stdout)["w2"]["changed"] == 0

    all_gone = fleet.playbook(
        "remove-worker.yml", "--limit", "w2", "-e", "cifleet_worker_remove_all=true"
    )
    assert recap(all_gone.stdout)["w2"]["changed"] > 0
    assert (
        host.ssh("ls -d /opt/cifleet /var/lib/cifleet /var/log/cifleet 2>/dev/null || true") == ""
    )


def _warm_wheelhouse(fleet, source, version: str) -> None:
    """Build the new version's archives for every kind of host the fleet has (the rolling
    upgrade goes one host at a time, so each would build its own kind on its turn): what is
    measured here is the roll, not the downloads."""
    kinds = set()
    for archive in (fleet.root / "wheelhouse").glob("cifleet-*.tar"):
        # cifleet-VERSION-cpXY-manylinux_2_NN_MACHINE-DEPS-fF.tar
        tag, platform = archive.name.split("-")[2:4]
        glibc_minor, machine = platform.removeprefix("manylinux_2_").split("_", 1)
        kinds.add(f"{tag[2]}.{tag[3:]},{machine},2.{glibc_minor}")
    subprocess.run(
        [
            str(BIN / "python"),
            str(REPO / "roles/cifleet_worker/files/wheelhouse.py"),
            "--source",
            str(source),
            "--cache",
            str(fleet.root / "wheelhouse"),
            "--version",
            version,
            *[f"--host={kind}" for kind in sorted(kinds)],
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )


def _grep_host(host, needle: str) -> str:
    """The files of the host (everything it wrote is in its overlay's upper folder) that
    contain `needle`."""
    found = subprocess.run(
        ["grep", "-rlF", "--", needle, str(host.root / "upper")], capture_output=True, text=True
    )
    return found.stdout
