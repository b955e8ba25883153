"""The primary's own worker, named `primary`: the same agent code, run in a thread of the
primary, registered and scheduled like any other worker, so a fresh primary runs pipelines
with no remote hosts.

Its jobs follow the agent's rule (agent/identity.py): with the primary running as root they
run as uids of their own, which can read neither the data dir (vault key, CA key, every
secret) nor the built-in worker's key. They must reach their workspaces, and the data dir
stays 0700, so as root the workspaces live outside it: --builtin-work-dir, by default
/var/lib/cifleet-builtin/WORKER_ID.
"""

import logging
import os
import shutil
import threading
from pathlib import Path

from primary.context import Primary

log = logging.getLogger("cifleet.primary")
BUILTIN_NAME = "primary"
DEFAULT_WORK_ROOT = Path("/var/lib/cifleet-builtin")


def local_api_url(primary: Primary) -> str:
    """The public port as seen from this host."""
    host = primary.config.bind
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"https://{host}:{primary.config.api_port}"


def builtin_name(primary: Primary) -> str:
    """`primary`, or the name `init` gave a primary that joined a shared fleet: each primary
    of a fleet has a built-in worker of its own."""
    return primary.data.settings().get("name", BUILTIN_NAME)


def start_builtin_worker(primary: Primary, stop: threading.Event) -> threading.Thread | None:
    slots = primary.config.primary_worker_slots
    if slots <= 0:
        return None
    from agent.home import ConfigError
    from agent.registration import RegistrationError, is_registered, register
    from agent.worker import Agent

    home = primary.data.builtin_worker_home
    _forget_if_removed(primary, home)
    try:
        if not is_registered(home):
            register(
                local_api_url(primary),
                primary.data.ca_cert,
                primary.vault.get("worker_secret"),
                builtin_name(primary),
                [],
                slots,
                home,
            )
        _apply_slots(primary, home, slots)
        _apply_work_dir(primary, home)
    except RegistrationError as exc:
        log.error("the built-in worker could not register: %s", exc)
        return None
    agent = Agent(home, stop=stop)
    thread = threading.Thread(target=_run, args=(agent, ConfigError), name="builtin-worker")
    thread.daemon = True
    thread.start()
    return thread


def _run(agent, config_error: type[Exception]) -> None:
    try:
        agent.run()
    except config_error as exc:  # e.g. its jobs could not reach their work dir
        log.error("the built-in worker cannot run jobs: %s", exc)


def work_dir(primary: Primary, worker_id: str) -> Path | None:
    """Where the built-in worker's workspaces go: --builtin-work-dir; as root by default
    outside the private data dir; else (jobs share the primary's identity anyway) None, the
    agent's default inside its home."""
    if primary.config.builtin_work_dir is not None:
        return primary.config.builtin_work_dir
    if os.geteuid() == 0:
        return DEFAULT_WORK_ROOT / worker_id
    return None


def _apply_work_dir(primary: Primary, home) -> None:
    from agent.home import load_config, update_config

    config = load_config(home)
    wanted = work_dir(primary, config["worker_id"])
    if config.get("work_dir") != (str(wanted) if wanted else None):
        update_config(home, work_dir=str(wanted) if wanted else None)


def _apply_slots(primary: Primary, home, slots: int) -> None:
    """`--primary-worker-slots` may change between starts; the record and config follow."""
    from agent.home import load_config, update_config

    config = load_config(home)
    if config.get("slots") == slots:
        return
    update_config(home, slots=slots)
    with primary.store.transaction() as conn:
        conn.execute("UPDATE workers SET slots = ? WHERE id = ?", (slots, config["worker_id"]))


def _forget_if_removed(primary: Primary, home) -> None:
    """An admin may have de-registered the built-in worker; it registers anew on the next
    start instead of being refused forever with a certificate nobody accepts."""
    from agent.home import CONFIG_FILE, is_registered, load_config

    if not is_registered(home):
        return
    worker_id = load_config(home).get("worker_id")
    if primary.store.query_one("SELECT 1 FROM workers WHERE id = ?", (worker_id,)):
        return
    log.info("the built-in worker %s was removed; registering it again", worker_id)
    old_work = DEFAULT_WORK_ROOT / str(worker_id)
    if primary.config.builtin_work_dir is None and old_work.is_dir():
        shutil.rmtree(old_work, ignore_errors=True)  # its workspaces went with the worker
    (home / CONFIG_FILE).unlink()  # the registered marker: register() writes a new identity
