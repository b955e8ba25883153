"""The agent's home directory: file layout, atomic writes, the config file.

<home>/worker.key   private key (0600, never leaves this host)
<home>/worker.crt   client certificate the primary issued
<home>/ca.pem       fleet CA: verifies the primary
<home>/config.json  written last at registration; its presence means "registered"
<home>/files/<pipeline>.json         static files fetched into that workspace: path -> sha256
<home>/spool/<run_id>-<attempt>/<job>.log   output not yet acknowledged by the primary
<home>/agent.lock   held (flock) by the one agent process running with this home
<home>/git/<pipeline>.git            the pipeline's clone (bare, the agent's own, 0700): the
                     checkout fetches into it and writes the work tree into the workspace

The work dir (config `work_dir`, default <home>/workspaces) holds what jobs may touch:
<work>/<pipeline>/   a pipeline's workspace, kept between runs (its cache), owned by the
                     identity its jobs run as (agent.identity)
<work>/.trash/       deleted workspaces, being removed in the background
"""

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

KEY_FILE = "worker.key"
CERT_FILE = "worker.crt"
CA_FILE = "ca.pem"
CONFIG_FILE = "config.json"
WORKSPACES_DIR = "workspaces"
SPOOL_DIR = "spool"
FILES_DIR = "files"
TRASH_DIR = "trash"
LOCK_FILE = "agent.lock"
GIT_DIR = "git"

CONFIG_KEYS = ("worker_id", "name", "tags", "slots", "primary_url", "agent_url")
# Optional keys: work_dir (absolute), job_uids ([start, end]), job_user, renew_after.


class ConfigError(Exception):
    """The home holds no usable configuration; the message says why."""


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a file so that readers see either the old content or all of the new one.

    A root process replacing another user's file keeps that user as its owner: the
    installer runs `update-worker` as root on the agent user's config.json, which the agent
    must still read when it starts again."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp already creates 0600; fchmod makes the mode explicit for other modes.
        os.fchmod(fd, mode)
        if old is not None and os.geteuid() == 0:
            os.fchown(fd, old.st_uid, old.st_gid)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename durable; a crash right after registration must not lose the key.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def git_dir(home: Path, pipeline: str) -> Path:
    """Where the agent keeps a pipeline's clone: outside the workspace, out of jobs' reach."""
    return Path(home) / GIT_DIR / f"{pipeline}.git"


def is_registered(home: Path) -> bool:
    return (Path(home) / CONFIG_FILE).is_file()


def load_config(home: Path) -> dict[str, Any]:
    """Read and check config.json; raise ConfigError with a one-line reason."""
    path = Path(home) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"{home} is not registered (no {CONFIG_FILE}); run 'cifleet-agent register' first"
        ) from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}")
    if not isinstance(config["slots"], int) or config["slots"] < 1:
        raise ConfigError(f"{path}: slots must be a positive integer")
    for name in (KEY_FILE, CERT_FILE, CA_FILE):
        if not (Path(home) / name).is_file():
            raise ConfigError(f"{home} lacks {name}; register this worker again")
    return config


def work_dir(home: Path, config: dict[str, Any]) -> Path:
    """Where the pipelines' workspaces are: config `work_dir`, or HOME/workspaces."""
    return Path(config.get("work_dir") or Path(home) / WORKSPACES_DIR).absolute()


def update_config(home: Path, **changes: Any) -> dict[str, Any]:
    """Change fields of config.json atomically (a crash leaves the old or the new file)."""
    config = load_config(home)
    config.update(changes)
    write_atomic(Path(home) / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return config


def wipe_identity(home: Path) -> list[Path]:
    """Delete the worker's registration, key and certificate; return what was deleted.

    config.json goes first: it is the "registered" marker, so an interruption leaves an
    unregistered home (which registers again), never a registered one without its key.
    """
    wiped = []
    for name in (CONFIG_FILE, KEY_FILE, CERT_FILE):
        path = Path(home) / name
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            wiped.append(path)
    return wiped


def lock_home(home: Path) -> int:
    """Take the home's lock, held while the returned descriptor is open (the process's
    lifetime at most): one agent process per home, so what it finds of an earlier process
    there (jobs, spool) is that process's leftovers. ConfigError if another agent holds it.
    """
    fd = os.open(Path(home) / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(f"another agent (pid {holder}) is running with the home {home}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
