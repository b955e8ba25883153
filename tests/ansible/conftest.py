"""Fixtures for the playbook tests: real hosts (systemd containers, tests/containers.py)
booted once per session, a real primary they reach over their network, and inventories
that leave every role variable at its default (systemd unit, the `cifleet` user,
/opt/cifleet, /var/lib/cifleet) except the fleet's own (primary URL, CA, token).

Hosts: w1, w2 (Debian 12, Python 3.11) and w3 (Debian 13, Python 3.13) are the fleet;
`bare` (sshd as PID 1, no systemd) and `old` (Debian 11, Python 3.9) are for the preflight.
"""

import shutil

import containers
import pytest
from playbook_fleet import BIN, FLEET, HEARTBEAT_TIMEOUT, REPO, Fleet, recap, start_fleet

__all__ = ["BIN", "REPO", "Fleet", "recap"]


def pytest_configure(config):
    config.addinivalue_line("markers", "ansible: playbook tests against real hosts and primary")


def _skip_reason() -> str | None:
    if shutil.which("ansible-playbook", path=str(BIN)) is None:
        return "ansible-core is not installed in the venv"
    return containers.skip_reason()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    """The session's hosts (booted) and primary; everything is torn down afterwards."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("fleet")
    lab = containers.HostLab(root / "hosts")
    fleet = None
    try:
        lab.prepare([release for release, _ in FLEET.values()] + ["bullseye"])
        for name, (release, _) in FLEET.items():
            lab.add(name, release)
        lab.add("bare", "bookworm", systemd=False)
        lab.add("old", "bullseye")
        lab.boot()
        tags = {name: tags for name, (_, tags) in FLEET.items()}
        fleet = start_fleet(root, lab, tags, "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT))
        yield fleet
        fleet.close()
    finally:
        # Hosts first, while the primary still answers their agents' last words.
        left = lab.close()
        if fleet is not None:
            fleet.primary.close()
    if left:
        pytest.fail("the container hosts left (removed now):\n" + "\n".join(left))
