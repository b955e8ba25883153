"""A real sshd on loopback addresses, for the playbook tests (hosts to log in to) and the
git-over-ssh tests (a server for the repositories): keys made for it, a port reserved on
every address, stopped with the sessions it forked."""

import contextlib
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil
from fleet import log_tail, wait_for
from ports import PortReservation, reserve_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    ports: PortReservation  # sshd has no Port=0: one port reserved on every address
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen
    root: Path

    @property
    def port(self) -> int:
        return self.ports.port


def start_sshd(root: Path, addresses, extra: tuple[str, ...] = ()) -> Sshd:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    for key in (host_key, client_key):
        if not key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_ed25519.pub").read_text())
    authorized.chmod(0o600)
    # sshd refuses to start without its privilege separation folder.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    ports = reserve_port(*addresses)
    port = ports.port
    host_pub = (root / "host_ed25519.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(
        "".join(f"[{a}]:{port} {host_pub[0]} {host_pub[1]}\n" for a in addresses)
    )
    args = [
        SSHD,
        "-D",
        "-e",
        "-f",
        "/dev/null",
        f"-oHostKey={host_key}",
        f"-oPidFile={root / 'sshd.pid'}",
        # sshd keeps the first value it gets for an option: the caller's come first.
        *extra,
        f"-oPort={port}",  # port before the addresses: ListenAddress uses the port seen so far
        *[f"-oListenAddress={a}" for a in addresses],
        "-oUsePAM=no",
        "-oPermitRootLogin=prohibit-password",
        "-oPasswordAuthentication=no",
        "-oKbdInteractiveAuthentication=no",
        "-oStrictModes=no",
        f"-oAuthorizedKeysFile={authorized} .ssh/authorized_keys",
        "-oSubsystem=sftp internal-sftp",
        "-oMaxStartups=50",
        "-oMaxSessions=50",
    ]
    log_path = root / "sshd.log"
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    sshd = Sshd(ports, client_key, known_hosts, proc, root)

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited with {proc.returncode}")
        # sshd carries on when some of its addresses fail to bind: that is no start.
        if "Bind to port" in log_path.read_text(errors="replace"):
            raise AssertionError("sshd could not bind every address")
        # Only sshd can listen there: the port is reserved on every address.
        return all(_accepts(address, port) for address in addresses)

    try:
        wait_for(listening, 15, "sshd to listen on every address")
    except BaseException as exc:
        stop_sshd(sshd)
        raise AssertionError(
            f"sshd did not come up ({exc}); {log_path}:\n{log_tail(log_path)}"
        ) from exc
    return sshd


def _accepts(address: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((address, port)) == 0


def stop_sshd(sshd: Sshd) -> None:
    """Stop sshd and the sessions it forked (they outlive it otherwise), then give back
    its port."""
    try:
        sessions = psutil.Process(sshd.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        sessions = []
    if sshd.proc.poll() is None:
        sshd.proc.send_signal(signal.SIGTERM)
        try:
            sshd.proc.wait(10)
        except subprocess.TimeoutExpired:
            sshd.proc.kill()
            sshd.proc.wait(5)
    for session in sessions:
        with contextlib.suppress(psutil.Error):
            session.kill()
    psutil.wait_procs(sessions, timeout=10)
    sshd.ports.close()
