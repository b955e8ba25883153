"""`cifleet-primary init`: create a data dir with everything a primary needs, all or nothing.

With an SQLite store (the default) the fleet lives in the data dir. With `--store
postgresql://...` it lives in the database, and the data dir holds what is this primary's
own: its server certificate and key, the vault key, a copy of the CA certificate, an admin
token, the built-in worker's home. On an empty database `init` creates the fleet there
(schema, CA, vault entries, worker secret, first admin token); on a database that holds
one, given the fleet's vault key, it joins it.
"""

import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from agent.home import write_atomic
from primary.fleet.ca import CertificateAuthority, create_ca
from primary.fleet.tokens import create_token, insert_token
from primary.store import vault as vault_mod
from primary.store.datadir import DataDir
from primary.store.engines import is_postgres_url, open_store
from primary.store.sqlite import SqliteStore

DEFAULT_HOSTNAMES = ["localhost", "127.0.0.1"]
FIRST_PRIMARY_NAME = "primary"


class InitError(Exception):
    pass


def new_worker_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def initialise(
    root: Path,
    hostnames: list[str],
    store_url: str | None = None,
    vault_key_file: Path | None = None,
    name: str | None = None,
) -> bool:
    """Create the data dir. Returns False, touching nothing, when it is already initialised.

    Everything local is built in a temporary sibling folder and renamed into place at the
    end, so an interrupted init leaves no half-made data dir behind. A fleet made in a
    database is committed in one transaction just before that rename.
    """
    root = root.absolute()
    if DataDir(root).is_initialised():
        return False
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InitError(f"{root} exists and is not an empty folder or a cifleet data dir")
    if store_url is not None and not is_postgres_url(store_url):
        raise InitError("--store: give a postgresql://USER@HOST/DATABASE URL")
    if vault_key_file is not None and os.environ.get(vault_mod.KEY_ENV):
        # Which one was meant? Taking either silently could make a second fleet's key.
        raise InitError(f"give the vault key once: {vault_mod.KEY_ENV} or --vault-key-file")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.init-"))
    committed = False
    try:
        # Loopback names are always included: the built-in worker and local tools connect
        # that way, and a loopback SAN grants nothing to anyone off this machine.
        names = list(dict.fromkeys([*hostnames, *DEFAULT_HOSTNAMES]))
        data = DataDir(staging)
        key = _vault_key(data, vault_key_file)
        if store_url is None:
            _populate(data, names, key)
        else:
            committed = _populate_shared(data, names, key, store_url, name, vault_key_file)
        os.chmod(staging, 0o700)
        # rename(2) replaces an empty directory atomically.
        os.rename(staging, root)
    except BaseException:
        if not committed:
            shutil.rmtree(staging, ignore_errors=True)
        else:  # the fleet is in the database: keep what opens it
            raise InitError(
                f"the fleet was created in the database, but {root} could not be made: "
                f"everything it needs (its vault key too) is in {staging}; move it there"
            ) from None
        raise
    return True


def _vault_key(data: DataDir, key_file: Path | None) -> bytes:
    """The key given (CIFLEET_VAULT_KEY, else --vault-key-file), or a new one; written to
    the data dir unless it came from the environment (kept off the disk on purpose)."""
    if os.environ.get(vault_mod.KEY_ENV):
        return vault_mod.load_key(data.vault_key)
    key = vault_mod.load_key(key_file) if key_file is not None else vault_mod.new_key()
    write_atomic(data.vault_key, key.hex().encode() + b"\n")
    return key


def _key_was_given(key_file: Path | None) -> bool:
    return key_file is not None or bool(os.environ.get(vault_mod.KEY_ENV))


def _write_local(
    data: DataDir, ca: CertificateAuthority, hostnames: list[str], key: bytes, entries: dict
) -> None:
    """The CA certificate and this primary's server certificate; the local vault (sealed
    with `key`) with the server's key and `entries`."""
    server_cert, server_key = ca.issue_server(hostnames)
    vault_mod.Vault.create(data.vault, key, {**entries, "server_key": server_key})
    write_atomic(data.ca_cert, ca.cert_pem.encode(), mode=0o644)
    write_atomic(data.server_cert, server_cert.encode(), mode=0o644)


def _populate(data: DataDir, hostnames: list[str], key: bytes) -> None:
    ca_cert, ca_key = create_ca()
    ca = CertificateAuthority(ca_cert, ca_key)
    _write_local(data, ca, hostnames, key, {"worker_secret": new_worker_secret(), "ca_key": ca_key})
    data.logs.mkdir(mode=0o700)
    store = SqliteStore(data.store)
    store.migrate()
    os.chmod(data.store, 0o600)  # SQLite gives its -wal and -shm files the same mode
    token = create_token(store, "initial admin", "admin")
    store.close()
    write_atomic(data.admin_token, token.encode() + b"\n")


def _populate_shared(
    data: DataDir,
    hostnames: list[str],
    key: bytes,
    url: str,
    name: str | None,
    key_file: Path | None,
) -> bool:
    """A primary of a fleet in a database: create the fleet there, or join it. Returns
    True once the database holds the change (the data dir must then be kept)."""
    store = open_store(url)
    try:
        _refuse_foreign_database(store)
        store.migrate()
        shared = vault_mod.StoreVault(store, key)
        joining = "ca_key" in shared.names()
        if joining and not _key_was_given(key_file):
            raise InitError(
                f"the database {store} holds a cifleet fleet already; to add a primary to "
                "it, give its vault key: --vault-key-file FIRST-DATA-DIR/vault.key (or set "
                f"{vault_mod.KEY_ENV})"
            )
        if joining:
            ca_cert, ca_key = shared.get("ca_cert"), shared.get("ca_key")  # a wrong key: here
            name = name or f"{FIRST_PRIMARY_NAME}-{secrets.token_hex(3)}"
        else:
            ca_cert, ca_key = create_ca()
            name = name or FIRST_PRIMARY_NAME
        ca = CertificateAuthority(ca_cert, ca_key)
        _write_local(data, ca, hostnames, key, {})
        settings = {"store": url, "name": name}
        write_atomic(data.config, json.dumps(settings, indent=2).encode() + b"\n")
        with store.transaction() as conn:
            if not joining:
                # Plain inserts: of two inits racing on one empty database, one makes the
                # fleet and the other is refused (409), its own data dir removed.
                shared.put_new(
                    conn,
                    {"worker_secret": new_worker_secret(), "ca_key": ca_key, "ca_cert": ca_cert},
                )
            token = insert_token(conn, f"initial admin of {name}", "admin")
            write_atomic(data.admin_token, token.encode() + b"\n")
        return True
    finally:
        store.close()


def _refuse_foreign_database(store) -> None:
    """A database with tables but no cifleet schema is someone else's: leave it alone."""
    if store.schema_version() > 0:
        return
    others = store.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        " AND table_name <> 'cifleet_schema' ORDER BY table_name LIMIT 3"
    )
    if others:
        tables = ", ".join(r["table_name"] for r in others)
        raise InitError(
            f"the database {store} is not empty ({tables}, ...) and holds no cifleet fleet: "
            "give an empty database"
        )
