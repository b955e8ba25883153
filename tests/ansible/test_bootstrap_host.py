"""`cifleet-primary bootstrap-host` against a real sshd with password authentication."""

import os
import subprocess
import sys
from pathlib import Path

import paramiko
import pytest
from conftest import start_sshd, stop_sshd
from ports import reserve_port

pytestmark = pytest.mark.ansible

BIN = Path(sys.executable).parent
ADDRESS = "127.0.0.5"
USER = "cifleet-boot"
PASSWORD = "boot-Pa55-word"


@pytest.fixture(scope="module")
def password_sshd(tmp_path_factory):
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and sshd (tests/run.sh installs openssh-server)")
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True)
    server = start_sshd(
        tmp_path_factory.mktemp("sshd-password"),
        (ADDRESS,),
        extra=(
            "-oPasswordAuthentication=yes",
            "-oAuthorizedKeysFile=.ssh/authorized_keys",
            "-oPermitRootLogin=no",
        ),
    )
    yield server
    stop_sshd(server)
    subprocess.run(["userdel", "-r", USER], capture_output=True)


@pytest.fixture
def controller_home(tmp_path):
    """A controller user's HOME with its own key pair and an empty known_hosts."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "id_ed25519")], check=True
    )
    return tmp_path


def bootstrap(home: Path, port: int, *args: str, password: str | None = PASSWORD):
    env = {**os.environ, "HOME": str(home)}
    env.pop("CIFLEET_BOOTSTRAP_PASSWORD", None)
    if password is not None:
        env["CIFLEET_BOOTSTRAP_PASSWORD"] = password
    return subprocess.run(
        [
            str(BIN / "cifleet-primary"),
            "bootstrap-host",
            f"{USER}@{ADDRESS}",
            "--port",
            str(port),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_bootstrap_installs_the_key_and_prints_the_inventory_line(password_sshd, controller_home):
    port = password_sshd.port
    result = bootstrap(controller_home, port, "--ask-password", "--accept-new-host-key")
    assert result.returncode == 0, result.stderr
    assert (
        f"{ADDRESS} ansible_host={ADDRESS} ansible_port={port} ansible_user={USER} "
        "ansible_python_interpreter=/usr/bin/python3"
    ) in result.stdout.splitlines()
    known = (controller_home / ".ssh" / "known_hosts").read_text()
    assert f"[{ADDRESS}]:{port}" in known
    public = (controller_home / ".ssh" / "id_ed25519.pub").read_text().strip()
    authorized = Path(f"/home/{USER}/.ssh/authorized_keys").read_text().splitlines()
    assert authorized.count(public) == 1

    # The installed key now logs in without a password; a second bootstrap adds nothing.
    again = bootstrap(
        controller_home, port, "--key", str(controller_home / ".ssh" / "id_ed25519"), password=None
    )
    assert again.returncode == 0, again.stderr
    assert "public key already in authorized_keys" in again.stdout
    authorized = Path(f"/home/{USER}/.ssh/authorized_keys").read_text().splitlines()
    assert authorized.count(public) == 1


def test_a_wrong_password_is_one_clear_line(password_sshd, controller_home):
    result = bootstrap(
        controller_home, password_sshd.port, "--accept-new-host-key", password="not-it"
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"cifleet-primary bootstrap-host: wrong password for {USER}@{ADDRESS}"
    )


def test_an_unreachable_host_is_one_clear_line(controller_home):
    env = {**os.environ, "HOME": str(controller_home), "CIFLEET_BOOTSTRAP_PASSWORD": PASSWORD}
    with reserve_port("127.0.0.6") as nobody:  # reserved, and nothing listens: refused
        result = subprocess.run(
            [
                str(BIN / "cifleet-primary"),
                "bootstrap-host",
                f"{USER}@127.0.0.6",
                "--port",
                str(nobody.port),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach 127.0.0.6" in lines[0], result.stderr


def test_an_unknown_host_key_needs_the_flag(password_sshd, controller_home):
    result = bootstrap(controller_home, password_sshd.port)
    assert result.returncode == 2
    assert "--accept-new-host-key" in result.stderr
    assert not (controller_home / ".ssh" / "known_hosts").exists()


def test_a_changed_host_key_is_refused(password_sshd, controller_home):
    other = paramiko.Ed25519Key.from_private_key_file(str(controller_home / ".ssh" / "id_ed25519"))
    known = controller_home / ".ssh" / "known_hosts"
    known.write_text(f"[{ADDRESS}]:{password_sshd.port} ssh-ed25519 {other.get_base64()}\n")
    result = bootstrap(controller_home, password_sshd.port, "--accept-new-host-key")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "host key" in lines[0] and "has changed" in lines[0], result.stderr
