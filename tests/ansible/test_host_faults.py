"""Hosts that go down: a clean reboot brings the agent back by itself (the unit is
enabled), and a host killed hard has its run re-queued on another host.

They use the session's fleet, whichever of its workers are registered."""

import pytest
from fleet import wait_for
from playbook_fleet import FLEET, HEARTBEAT_TIMEOUT

pytestmark = pytest.mark.ansible


@pytest.fixture(scope="module")
def workers(fleet):
    """The fleet's registered workers (all of them when none or one is)."""
    names = [n for n in FLEET if fleet.primary.worker(n)]
    if len(names) < 2:
        fleet.playbook("add-worker.yml")
        names = list(FLEET)
    for name in names:
        wait_for(lambda n=name: fleet.primary.worker(n)["state"] == "active", 30, f"{name} active")
    return names


def test_a_rebooted_host_comes_back_active_by_itself(fleet, workers):
    host = fleet.hosts["w1"]
    before = host.ssh("systemctl show -p InvocationID --value cifleet-agent")
    host.poweroff()
    fleet.forget_connections(host)
    host.boot()
    # No playbook runs: systemd starts the enabled unit at boot.
    wait_for(
        lambda: host.ssh("systemctl is-active cifleet-agent", check=False) == "active\n",
        60,
        "the agent to start at boot",
    )
    assert host.ssh("systemctl show -p InvocationID --value cifleet-agent") != before
    # And it takes work: only w1 has the tag alpha.
    fleet.primary.pipeline(
        'name: on-alpha\ntags: [alpha]\njobs:\n  - name: where\n    steps: ["cat /etc/hostname"]\n'
    )
    run = fleet.primary.wait_run(fleet.primary.trigger("on-alpha"), timeout=60)
    assert run["state"] == "success", run
    assert fleet.primary.job_log(run["id"], "where") == b"w1\n"


def test_a_host_killed_hard_has_its_run_requeued_on_another(fleet, workers):
    """The run waits for a file that only the surviving hosts get; its host is killed
    (network cut first, then SIGKILL to everything in it): after the heartbeat timeout its
    attempt is lost and the run finishes on another host."""
    fleet.primary.pipeline(
        "name: anywhere\ntags: [linux]\nretries_on_lost: 1\njobs:\n  - name: work\n"
        '    steps: ["cat /etc/hostname", "while [ ! -e /srv/go ]; do sleep 0.1; done"]\n'
    )
    run_id = fleet.primary.trigger("anywhere")
    run = fleet.primary.wait_run(run_id, timeout=60, states=("running",))
    victim = fleet.hosts[run["worker_name"]]
    wait_for(
        lambda: fleet.log(run_id, "work") == f"{victim.name}\n".encode(),
        60,
        "the job to start",
    )
    survivors = [fleet.hosts[n] for n in workers if n != victim.name]
    for host in survivors:
        (host.merged / "srv").mkdir(exist_ok=True)
        (host.merged / "srv" / "go").touch()

    victim.kill()
    fleet.forget_connections(victim)
    run = fleet.primary.wait_run(run_id, timeout=HEARTBEAT_TIMEOUT * 4)
    assert run["state"] == "success", run
    lost, done = run["attempts"]
    assert (lost["worker_name"], lost["outcome"]) == (victim.name, "lost")
    assert done["worker_name"] in {h.name for h in survivors} and done["outcome"] == "success"
    assert fleet.primary.job_log(run_id, "work") == f"{done['worker_name']}\n".encode()

    # Booted again, the host's agent comes back and the worker is active again.
    victim.boot()
    wait_for(
        lambda: fleet.primary.worker(victim.name)["state"] == "active", 60, "the host to return"
    )
    assert victim.ssh("systemctl is-active cifleet-agent") == "active\n"
