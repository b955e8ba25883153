"""How git gets a source's credentials without them touching argv, a log or a file.

- An HTTPS token: git's credential helper is a shell function given in the environment
  (GIT_CONFIG_COUNT/KEY/VALUE, git 2.31+), scoped to the source's scheme and host, that
  prints the user name and the token from two environment variables; redirects are not
  followed, so no other host is ever asked for them. Only git and its helper see them
  (/proc/PID/environ is readable by the same uid and root alone); the helper's text, in
  the environment too, holds no secret.
- An SSH key: a private ssh-agent for the one git command, run as the caller (the agent
  or the primary, never a job's uid), its socket in a 0700 folder of its own; the key goes
  to `ssh-add -` on stdin and lives in that agent's memory until it is killed right after.
  ssh gets the known_hosts lines from a file in that folder, with StrictHostKeyChecking=yes:
  a server that is not the one named is refused.

Every command that talks to a remote also gets remote_env's limits: the source's transport
only, no hooks, no fsmonitor. Used by the agent (the fetch into its own git directory) and
the primary (`git ls-remote` when a run is triggered), so it imports nothing of either.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

HELPER = (
    '!f() { printf "username=%s\\npassword=%s\\n"'
    ' "$CIFLEET_GIT_USERNAME" "$CIFLEET_GIT_PASSWORD"; }; f'
)
AGENT_START_SECONDS = 5.0


class GitAuthError(Exception):
    """The credentials could not be handed to git; the message holds no secret."""


def base_env(home: str, path: str | None = None) -> dict[str, str]:
    """A clean environment for git: nothing of the caller's (its own credentials, its git
    settings) leaks in, no prompt waits for a terminal, no system or global config."""
    return {
        "PATH": path or os.environ.get("PATH", os.defpath),
        "HOME": home,
        "LANG": "C",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
    }


def remote_env(
    url: str, username: str | None = None, token: str | None = None, ca_file: str | None = None
) -> dict[str, str]:
    """Environment entries for a git command that talks to `url`: only the URL's transport
    (GIT_ALLOW_PROTOCOL), no hooks, no fsmonitor, no redirects to elsewhere, with a token a
    credential helper that answers for that scheme and host alone (https only: GitAuthError
    otherwise), and `ca_file` the CAs an https server is checked against."""
    scheme = transport(url)
    if token is not None and scheme != "https":
        raise GitAuthError("a token is sent only over https")
    config = [
        ("core.hooksPath", "/dev/null"),
        ("core.fsmonitor", "false"),
        ("http.followRedirects", "false"),
        ("credential.helper", ""),  # forget any helper configured elsewhere
    ]
    if ca_file is not None:
        config.append(("http.sslCAInfo", ca_file))
    env = {"GIT_ALLOW_PROTOCOL": scheme}
    if token is not None:
        host = urllib.parse.urlsplit(url).netloc
        config.append((f"credential.{scheme}://{host}.helper", HELPER))
        env |= {"CIFLEET_GIT_USERNAME": username or "", "CIFLEET_GIT_PASSWORD": token}
    env["GIT_CONFIG_COUNT"] = str(len(config))
    for i, (key, value) in enumerate(config):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


def transport(url: str) -> str:
    """The transport git would use for `url`: its scheme, or ssh for user@host:path."""
    if "://" not in url:
        return "ssh" if "@" in url.split(":", 1)[0] else "file"
    return url.split("://", 1)[0].lower()


@contextlib.contextmanager
def ssh_env(known_hosts: str, key: str | None) -> Iterator[dict[str, str]]:
    """Environment entries for git over ssh: GIT_SSH_COMMAND with the known hosts, and the
    key in a private ssh-agent, both the caller's own (the agent's or the primary's: never
    a job's). Everything is gone when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="cifleet-ssh-"))
    agent = None
    try:
        hosts = folder / "known_hosts"
        hosts.write_text(known_hosts)
        env: dict[str, str] = {}
        options = (
            f"-o UserKnownHostsFile={hosts} -o StrictHostKeyChecking=yes -o BatchMode=yes"
            " -o IdentityFile=none -o ConnectTimeout=30 -F /dev/null"
        )
        if key is not None:
            socket_path = folder / "agent.sock"
            agent = _start_agent(socket_path)
            _add_key(socket_path, key)
            env["SSH_AUTH_SOCK"] = str(socket_path)
        env["GIT_SSH_COMMAND"] = f"ssh {options}"
        env["GIT_SSH_VARIANT"] = "ssh"
        yield env
    finally:
        if agent is not None:
            _stop(agent)
        shutil.rmtree(folder, ignore_errors=True)


def _start_agent(socket_path: Path) -> subprocess.Popen:
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"PATH": os.environ.get("PATH", os.defpath)},
        start_new_session=True,
    )
    deadline = time.monotonic() + AGENT_START_SECONDS
    while not socket_path.exists():
        if agent.poll() is not None or time.monotonic() > deadline:
            _stop(agent)
            raise GitAuthError("ssh-agent did not start")
        time.sleep(0.005)
    return agent


def _add_key(socket_path: Path, key: str) -> None:
    text = key if key.endswith("\n") else key + "\n"  # ssh-add wants the final newline
    result = subprocess.run(
        ["ssh-add", "-q", "-"],
        input=text.encode(),
        capture_output=True,
        env={"PATH": os.environ.get("PATH", os.defpath), "SSH_AUTH_SOCK": str(socket_path)},
        timeout=AGENT_START_SECONDS,
    )
    if result.returncode != 0:
        # ssh-add names no key material in its errors ("Error loading key "(stdin)": ...).
        reason = result.stderr.decode(errors="replace").strip().splitlines()
        raise GitAuthError(f"the ssh key was refused: {reason[-1] if reason else 'ssh-add failed'}")


def _stop(agent: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text
