"""`cifleet-primary init`: create a data dir with everything a primary needs, all or nothing."""

import os
import secrets
import shutil
import tempfile
from pathlib import Path

from agent.home import write_atomic
from primary.fleet.ca import CertificateAuthority, create_ca
from primary.fleet.tokens import create_token
from primary.store import vault as vault_mod
from primary.store.datadir import DataDir
from primary.store.sqlite import Store

DEFAULT_HOSTNAMES = ["localhost", "127.0.0.1"]


class InitError(Exception):
    pass


def new_worker_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def initialise(root: Path, hostnames: list[str]) -> bool:
    """Create the data dir. Returns False, touching nothing, when it is already initialised.

    Everything is built in a temporary sibling folder and renamed into place at the end, so
    an interrupted init leaves no half-made data dir behind.
    """
    root = root.absolute()
    if DataDir(root).is_initialised():
        return False
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InitError(f"{root} exists and is not an empty folder or a cifleet data dir")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.init-"))
    try:
        # Loopback names are always included: the built-in worker and local tools connect
        # that way, and a loopback SAN grants nothing to anyone off this machine.
        _populate(DataDir(staging), list(dict.fromkeys([*hostnames, *DEFAULT_HOSTNAMES])))
        os.chmod(staging, 0o700)
        # rename(2) replaces an empty directory atomically.
        os.rename(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def _populate(data: DataDir, hostnames: list[str]) -> None:
    if os.environ.get(vault_mod.KEY_ENV):
        key = vault_mod.load_key(data.vault_key)
    else:
        key = vault_mod.new_key()
        write_atomic(data.vault_key, key.hex().encode() + b"\n")
    ca_cert, ca_key = create_ca()
    ca = CertificateAuthority(ca_cert, ca_key)
    server_cert, server_key = ca.issue_server(hostnames)
    vault_mod.Vault.create(
        data.vault,
        key,
        {"worker_secret": new_worker_secret(), "ca_key": ca_key, "server_key": server_key},
    )
    write_atomic(data.ca_cert, ca_cert.encode(), mode=0o644)
    write_atomic(data.server_cert, server_cert.encode(), mode=0o644)
    data.logs.mkdir(mode=0o700)
    store = Store(data.store)
    store.migrate()
    os.chmod(data.store, 0o600)  # SQLite gives its -wal and -shm files the same mode
    token = create_token(store, "initial admin", "admin")
    store.close()
    write_atomic(data.admin_token, token.encode() + b"\n")
