"""Helpers for installers and hosts without systemd: `cifleet-agent check` (is this home
registered and does the primary still accept its certificate?) and `run --daemon`
(double fork, pidfile, log file)."""

import contextlib
import datetime
import json
import os
import ssl
import sys
from pathlib import Path

from agent.client import TransportError, agent_context, post_to_any
from agent.home import CERT_FILE, ConfigError, is_registered, load_config
from agent.protocol import CODE_CREDENTIALS_CONFLICT, CODE_UNKNOWN_WORKER, WORKER_PATH

CHECK_OK = 0
CHECK_ERROR = 2
CHECK_REFUSED = 3
CHECK_NOT_REGISTERED = 4
CHECK_CONFLICT = 5  # a copy of the key was used: an admin must look before anything is redone


def check(home: Path) -> tuple[int, str]:
    """(exit code, one-line message) for `cifleet-agent check`.

    It asks with an empty update of the worker's own record (POST /agent/v1/worker {}):
    authenticated by the certificate like a poll, but it can never be handed an assignment
    that nobody would run.
    """
    if not is_registered(home):
        return CHECK_NOT_REGISTERED, f"{home} is not registered"
    try:
        config = load_config(home)
    except ConfigError as e:
        return CHECK_NOT_REGISTERED, str(e)
    from cryptography import x509  # here, not at the top: `run` imports this module too

    try:
        cert = x509.load_pem_x509_certificate((Path(home) / CERT_FILE).read_bytes())
    except (OSError, ValueError) as e:
        return CHECK_ERROR, f"cannot read the worker certificate: {e}"
    expired = f"the worker certificate expired on {cert.not_valid_after_utc}"
    if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        return CHECK_REFUSED, expired
    try:
        context = agent_context(Path(home))
    except (ssl.SSLError, OSError) as e:
        return CHECK_ERROR, f"cannot load the worker certificate or key from {home}: {e}"
    try:
        resp = post_to_any(config, context, WORKER_PATH, {}, timeout=15)
    except TransportError as e:
        return CHECK_ERROR, f"cannot reach the primary at {config['agent_url']}: {e}"
    if resp.status == 403 and resp.code == CODE_UNKNOWN_WORKER:
        # The certificate may have expired while the request was on its way; the primary
        # refuses an expired one just as a revoked one, so tell the two apart here.
        if cert.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
            return CHECK_REFUSED, expired
        return CHECK_REFUSED, "the primary no longer knows this worker (removed or revoked)"
    if resp.status == 403 and resp.code == CODE_CREDENTIALS_CONFLICT:
        return CHECK_CONFLICT, f"the primary refuses this worker's certificates: {resp.message}"
    if resp.status != 200:
        return CHECK_ERROR, f"unexpected answer from the primary: HTTP {resp.status}"
    worker = resp.json()
    # One JSON line: installers compare tags and slots with what they want.
    return CHECK_OK, json.dumps(
        {
            "name": worker.get("name"),
            "id": worker.get("id"),
            "tags": worker.get("tags"),
            "slots": worker.get("slots"),
            "draining": worker.get("draining"),
        },
        sort_keys=True,
    )


def pidfile_process_alive(pidfile: Path) -> int | None:
    """The pid in `pidfile` when that process is alive, else None."""
    try:
        pid = int(Path(pidfile).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def daemonize(pidfile: Path, log_file: Path) -> None:
    """Double fork so the agent survives the shell (or SSH session) that started it.

    Returns in the daemon (grandchild) with stdin on /dev/null and stdout/stderr appended
    to `log_file`; the original process exits 0 once the pidfile is written.
    """
    pidfile, log_file = Path(pidfile).absolute(), Path(log_file).absolute()
    # Fail here, with a message the caller sees, rather than silently in the daemon.
    if not pidfile.parent.is_dir():
        raise OSError(f"the pidfile's folder {pidfile.parent} does not exist")
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        # The original process: wait until the daemon has written its pidfile, so callers
        # (Ansible) can rely on it right after this command returns.
        os.close(write_fd)
        os.close(log_fd)
        with os.fdopen(read_fd, "rb") as r:
            ok = r.read(1) == b"1"
        os._exit(0 if ok else 2)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    os.umask(0o022)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    tmp = pidfile.with_name(f".{pidfile.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, pidfile)
    with os.fdopen(write_fd, "wb") as w:
        w.write(b"1")


def remove_pidfile(pidfile: Path) -> None:
    """Remove the pidfile when it still names this process."""
    with contextlib.suppress(OSError, ValueError):
        if int(Path(pidfile).read_text().strip()) == os.getpid():
            Path(pidfile).unlink()
