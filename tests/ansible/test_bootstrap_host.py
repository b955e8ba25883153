"""`cifleet-primary bootstrap-host` against real hosts (systemd containers) with password
login: a user with a password and no key, as on a freshly installed machine."""

import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest

pytestmark = pytest.mark.ansible

BIN = Path(sys.executable).parent
USER = "cifleet-boot"
PASSWORD = "boot-Pa55-word"


@pytest.fixture(scope="module")
def password_hosts(fleet):
    """`bare` (Debian 12) and `old` (Debian 11), each with a user that logs in by password."""
    hosts = [fleet.hosts["bare"], fleet.hosts["old"]]
    for host in hosts:
        host.ssh(
            f"userdel -r {USER} 2>/dev/null; useradd -m -s /bin/sh {USER}"
            f" && echo '{USER}:{PASSWORD}' | chpasswd"
        )
    return hosts


@pytest.fixture
def controller_home(tmp_path):
    """A controller user's HOME with its own key pair and an empty known_hosts."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], check=True
    )
    return tmp_path


def bootstrap(home: Path, address: str, *args: str, password: str | None = PASSWORD):
    env = {**os.environ, "HOME": str(home)}
    env.pop("CIFLEET_BOOTSTRAP_PASSWORD", None)
    if password is not None:
        env["CIFLEET_BOOTSTRAP_PASSWORD"] = password
    return subprocess.run(
        [str(BIN / "cifleet-primary"), "bootstrap-host", f"{USER}@{address}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_bootstrap_installs_the_key_and_prints_the_inventory_line(password_hosts, controller_home):
    host = password_hosts[0]
    result = bootstrap(controller_home, host.address, "--ask-password", "--accept-new-host-key")
    assert result.returncode == 0, result.stderr
    assert (
        f"{host.address} ansible_host={host.address} ansible_port=22 ansible_user={USER} "
        "ansible_python_interpreter=/usr/bin/python3"
    ) in result.stdout.splitlines()
    # The host key recorded is the host's own (the one the lab generated for it).
    known = (controller_home / ".ssh" / "known_hosts").read_text()
    assert host.host_key_line.split()[2] in known and host.address in known
    public = (controller_home / ".ssh" / "id_ed25519.pub").read_text().strip()
    authorized = host.ssh(f"cat /home/{USER}/.ssh/authorized_keys").splitlines()
    assert authorized.count(public) == 1

    # The installed key now logs in without a password; a second bootstrap adds nothing.
    again = bootstrap(
        controller_home,
        host.address,
        "--key",
        str(controller_home / ".ssh" / "id_ed25519"),
        password=None,
    )
    assert again.returncode == 0, again.stderr
    assert "public key already in authorized_keys" in again.stdout
    assert host.ssh(f"cat /home/{USER}/.ssh/authorized_keys").splitlines().count(public) == 1


def test_a_host_whose_python_is_too_old_is_one_clear_line(password_hosts, controller_home):
    old = password_hosts[1]
    result = bootstrap(controller_home, old.address, "--accept-new-host-key")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "cifleet-primary bootstrap-host: /usr/bin/python3 is Python 3.9; the agent needs 3.11 "
        "or later"
    )


def test_a_wrong_password_is_one_clear_line(password_hosts, controller_home):
    address = password_hosts[0].address
    result = bootstrap(controller_home, address, "--accept-new-host-key", password="not-it")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cifleet-primary bootstrap-host: wrong password for {USER}@{address}"
    )


def test_an_unreachable_host_is_one_clear_line(password_hosts, controller_home):
    # The host is up, but nothing listens on this port.
    address = password_hosts[0].address
    result = bootstrap(controller_home, address, "--port", "2222")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach {address}:2222" in lines[0], result.stderr


def test_an_unknown_host_key_needs_the_flag(password_hosts, controller_home):
    result = bootstrap(controller_home, password_hosts[0].address)
    assert result.returncode == 2
    assert "--accept-new-host-key" in result.stderr
    assert not (controller_home / ".ssh" / "known_hosts").exists()


def test_a_changed_host_key_is_refused(password_hosts, controller_home):
    address = password_hosts[0].address
    other = paramiko.Ed25519Key.from_private_key_file(str(controller_home / ".ssh" / "id_ed25519"))
    known = controller_home / ".ssh" / "known_hosts"
    known.write_text(f"{address} ssh-ed25519 {other.get_base64()}\n")
    result = bootstrap(controller_home, address, "--accept-new-host-key")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "host key" in lines[0] and "has changed" in lines[0], result.stderr


def test_ssh_keyscan_records_the_key_host_key_checking_then_accepts(fleet, tmp_path):
    """The README's line for hosts that take the key already: ssh-keyscan's line is the
    host's own key, and with it a strict SSH login goes through."""
    host = fleet.hosts["w1"]
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", host.address], capture_output=True, text=True, timeout=30
    ).stdout
    assert scanned.split() == host.host_key_line.split()
    known = tmp_path / "known_hosts"
    known.write_text(scanned)
    login = subprocess.run(
        [
            "ssh",
            "-i",
            str(fleet.lab.client_key),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={known}",
            f"root@{host.address}",
            "cat /etc/hostname",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (login.returncode, login.stdout) == (0, "w1\n"), login.stderr
