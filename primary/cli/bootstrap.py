"""`cifleet-primary bootstrap-host user@host`: prepare a bare host for Ansible.

Connects once over SSH (password or key), installs the controller's public key in the
user's authorized_keys, checks that python3 (3.11 or later) with its venv module is there, and
returns the inventory line to add. Host keys are checked against ~/.ssh/known_hosts; a host
not in it is refused unless accept_new_host_key (then its key is recorded), and a host whose
key changed is always refused.
"""

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

import paramiko

PASSWORD_ENV = "CIFLEET_BOOTSTRAP_PASSWORD"
CONNECT_TIMEOUT_SECONDS = 15
# ~/.ssh/authorized_keys gets the key only when no identical line is there (idempotent);
# the key arrives on stdin, so it is never parsed by a shell.
INSTALL_KEY_SCRIPT = (
    "set -eu; umask 077; mkdir -p ~/.ssh; chmod 700 ~/.ssh; read -r key; "
    "touch ~/.ssh/authorized_keys; chmod 600 ~/.ssh/authorized_keys; "
    'if grep -qxF -- "$key" ~/.ssh/authorized_keys; then echo present; '
    'else printf "%s\\n" "$key" >> ~/.ssh/authorized_keys; echo added; fi'
)
CHECK_PYTHON_SCRIPT = (
    "command -v python3 && python3 -c 'import sys, venv; print(\"%d.%d\" % sys.version_info[:2])'"
)
MIN_PYTHON = (3, 11)

# paramiko logs every connection at INFO; the command's own lines say what matters.
logging.getLogger("paramiko").setLevel(logging.WARNING)


class BootstrapError(Exception):
    """One-line reason the bootstrap failed."""


@dataclass
class Target:
    user: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, port: int) -> "Target":
        user, sep, host = text.rpartition("@")
        if not sep or not user or not host:
            raise BootstrapError(f"give the host as user@host, not {text!r}")
        return cls(user, host, port)

    @property
    def known_hosts_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def default_public_key() -> Path:
    for name in ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"):
        path = Path.home() / ".ssh" / name
        if path.is_file():
            return path
    raise BootstrapError(
        "no public key in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub); "
        "create one with: ssh-keygen -t ed25519"
    )


def bootstrap(
    target: Target,
    password: str | None = None,
    key_file: Path | None = None,
    public_key_file: Path | None = None,
    accept_new_host_key: bool = False,
    known_hosts: Path | None = None,
) -> tuple[str, list[str]]:
    """Do the bootstrap; return (inventory line, what was done). Raises BootstrapError."""
    known_hosts = known_hosts or Path.home() / ".ssh" / "known_hosts"
    public_key = (public_key_file or default_public_key()).read_text().strip()
    if not public_key.startswith(("ssh-", "ecdsa-")) or "\n" in public_key:
        raise BootstrapError(f"{public_key_file} does not hold one OpenSSH public key")

    client = paramiko.SSHClient()
    if known_hosts.is_file():
        client.load_host_keys(str(known_hosts))
    # Refuse unknown hosts unless told; a changed key raises BadHostKeyException regardless.
    policy = paramiko.AutoAddPolicy() if accept_new_host_key else paramiko.RejectPolicy()
    client.set_missing_host_key_policy(policy)
    known_before = client.get_host_keys().lookup(target.known_hosts_name) is not None
    try:
        client.connect(
            target.host,
            port=target.port,
            username=target.user,
            password=password,
            key_filename=str(key_file) if key_file else None,
            # Only what was given: no agent, no other keys (a clear "wrong password").
            allow_agent=False,
            look_for_keys=False,
            timeout=CONNECT_TIMEOUT_SECONDS,
            auth_timeout=CONNECT_TIMEOUT_SECONDS,
            banner_timeout=CONNECT_TIMEOUT_SECONDS,
        )
    except paramiko.BadHostKeyException:
        raise BootstrapError(
            f"the host key of {target.known_hosts_name} has changed since it was recorded in "
            f"{known_hosts}; if that is expected, remove the old one with: "
            f"ssh-keygen -R '{target.known_hosts_name}'"
        ) from None
    except paramiko.AuthenticationException:
        what = "wrong password" if password is not None else "the key was not accepted"
        raise BootstrapError(f"{what} for {target.user}@{target.host}") from None
    except paramiko.SSHException as e:
        if "not found in known_hosts" in str(e):
            raise BootstrapError(
                f"{target.known_hosts_name} is not in {known_hosts}; check its host key "
                "fingerprint, then run again with --accept-new-host-key"
            ) from None
        raise BootstrapError(f"SSH to {target.host}:{target.port} failed: {e}") from None
    except (TimeoutError, OSError) as e:
        raise BootstrapError(
            f"cannot reach {target.host}:{target.port}: {e.strerror or e}"
        ) from None

    done = []
    try:
        if accept_new_host_key and not known_before:
            known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            client.save_host_keys(str(known_hosts))
            done.append(f"recorded the host key of {target.known_hosts_name} in {known_hosts}")
        status, out, err = _run(client, INSTALL_KEY_SCRIPT, stdin=public_key + "\n")
        if status != 0:
            raise BootstrapError(f"cannot install the public key: {err.strip() or out.strip()}")
        done.append(
            "public key already in authorized_keys"
            if out.strip() == "present"
            else "installed the public key in authorized_keys"
        )
        status, out, err = _run(client, CHECK_PYTHON_SCRIPT)
        lines = out.split()
        if status != 0 or len(lines) != 2:
            raise BootstrapError(
                "python3 with its venv module is missing on the host; "
                "install it (Debian/Ubuntu: apt-get install python3)"
            )
        python, version = lines
        if tuple(int(x) for x in version.split(".")) < MIN_PYTHON:
            raise BootstrapError(f"{python} is Python {version}; the agent needs 3.11 or later")
        done.append(f"found {python} (Python {version})")
    finally:
        client.close()
    line = (
        f"{target.host} ansible_host={target.host} ansible_port={target.port} "
        f"ansible_user={target.user} ansible_python_interpreter={python}"
    )
    return line, done


def _run(client: paramiko.SSHClient, command: str, stdin: str = "") -> tuple[int, str, str]:
    chan_in, chan_out, chan_err = client.exec_command(
        f"sh -c {shlex.quote(command)}", timeout=CONNECT_TIMEOUT_SECONDS
    )
    if stdin:
        chan_in.write(stdin)
    chan_in.channel.shutdown_write()
    out = chan_out.read().decode(errors="replace")
    err = chan_err.read().decode(errors="replace")
    return chan_out.channel.recv_exit_status(), out, err


def password_from(ask: bool) -> str | None:
    """The password: from CIFLEET_BOOTSTRAP_PASSWORD, else prompted when asked, else None."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if ask:
        import getpass

        return getpass.getpass("SSH password: ")
    return None
