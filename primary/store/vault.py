"""The primary's secrets, sealed with AES-256-GCM: an encrypted JSON document on disk
(`Vault`), and for a fleet in a shared database its entries there (`StoreVault`), each
sealed alone; `FleetVault` joins the two for a primary of such a fleet.

The data key lives in `vault.key` (0600) in the data dir, or in the CIFLEET_VAULT_KEY
environment variable (hex) so an operator can keep it off the disk. It is not derived from
the CA key. Every primary of a fleet has the same key: it opens the shared entries.
"""

import copy
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.home import write_atomic

KEY_ENV = "CIFLEET_VAULT_KEY"
_AAD = b"cifleet-vault-v1"
_NONCE_BYTES = 12


class VaultError(Exception):
    """The vault cannot be opened; the message says why and names no secret."""


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def load_key(key_file: Path) -> bytes:
    env = os.environ.get(KEY_ENV)
    if env:
        try:
            key = bytes.fromhex(env.strip())
        except ValueError:
            raise VaultError(f"{KEY_ENV} is not hex") from None
        source = KEY_ENV
    else:
        try:
            key = bytes.fromhex(key_file.read_text().strip())
        except FileNotFoundError:
            raise VaultError(
                f"no vault key: {key_file} is missing and {KEY_ENV} is not set"
            ) from None
        except ValueError:
            raise VaultError(f"the vault key in {key_file} is not hex") from None
        source = str(key_file)
    if len(key) != 32:
        raise VaultError(f"the vault key from {source} must be 32 bytes (64 hex digits)")
    return key


class Vault:
    """Holds the primary's secrets; every change is written through at once.

    `serve` and the CLI (`secret rotate`) are separate processes sharing the file: reads
    reload when the file changed, and writes re-read under a lock file first, so neither
    process acts on a stale secret or overwrites the other's change.
    """

    def __init__(self, path: Path, key: bytes, data: dict[str, Any]):
        self._path = path
        self._key = key
        self._aead = AESGCM(key)
        self._data = data
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()

    @classmethod
    def create(cls, path: Path, key: bytes, data: dict[str, Any]) -> "Vault":
        vault = cls(path, key, dict(data))
        vault._save()
        return vault

    @classmethod
    def open(cls, path: Path, key: bytes) -> "Vault":
        return cls(path, key, _read(path, key))

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _refresh(self) -> None:
        stamp = self._file_stamp()
        if stamp != self._stamp:
            self._data = _read(self._path, self._key)
            self._stamp = stamp

    def get(self, name: str) -> Any:
        """A copy: a caller changing what it got must not change the vault behind set()."""
        with self._lock:
            self._refresh()
            return copy.deepcopy(self._data[name])

    def names(self) -> list[str]:
        with self._lock:
            self._refresh()
            return sorted(self._data)

    def set(self, name: str, value: Any) -> None:
        self.update(name, lambda _old: value)

    def update(self, name: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Replace the entry with `change(its value, or default)`, with no other change in
        between (another process's included); return the new value."""
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._refresh()
            value = change(copy.deepcopy(self._data.get(name, default)))
            self._data[name] = value
            self._save()
            return copy.deepcopy(value)

    def setdefault(self, name: str, value: Any) -> Any:
        """The entry's value; `value` stored first when there is none."""
        return self.update(name, lambda old: value if old is None else old)

    def _save(self) -> None:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(self._data).encode(), _AAD)
        write_atomic(self._path, nonce + sealed)
        self._stamp = self._file_stamp()


def _read(path: Path, key: bytes) -> dict[str, Any]:
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise VaultError(f"no vault at {path}; run `cifleet-primary init` first") from None
    nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, _AAD)
    except InvalidTag:
        raise VaultError(
            f"cannot open the vault {path}: wrong vault key or damaged file "
            "(the vault was left untouched)"
        ) from None
    return json.loads(plain)


def _seal(aead: AESGCM, name: str, value: Any) -> bytes:
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return nonce + aead.encrypt(nonce, json.dumps(value).encode(), _AAD + b":" + name.encode())


class StoreVault:
    """The vault of a fleet in a shared database: one row per entry in `vault_entries`,
    sealed alone, its name bound in as associated data (a row copied under another name
    does not open). Every primary reads the rows it needs when it needs them, so a change
    through one primary (a rotated worker secret) holds in all of them at once."""

    def __init__(self, store, key: bytes):
        self._store = store
        self._aead = AESGCM(key)

    def _open(self, name: str, sealed: bytes) -> Any:
        nonce, body = bytes(sealed[:_NONCE_BYTES]), bytes(sealed[_NONCE_BYTES:])
        try:
            plain = self._aead.decrypt(nonce, body, _AAD + b":" + name.encode())
        except InvalidTag:
            raise VaultError(
                f"cannot open the vault entry {name!r} in the store {self._store}: wrong "
                "vault key (the key of this fleet is in the vault.key of its first primary)"
            ) from None
        return json.loads(plain)

    def get(self, name: str) -> Any:
        row = self._store.query_one("SELECT sealed FROM vault_entries WHERE name = ?", (name,))
        if row is None:
            raise KeyError(name)
        return self._open(name, row["sealed"])

    def names(self) -> list[str]:
        return [r["name"] for r in self._store.query("SELECT name FROM vault_entries")]

    def put_new(self, conn, entries: dict[str, Any]) -> None:
        """Insert entries in the caller's transaction; one that exists already is refused
        (a constraint conflict), so two fleets are never made in one database."""
        for name, value in entries.items():
            conn.execute(
                "INSERT INTO vault_entries (name, sealed) VALUES (?, ?)",
                (name, _seal(self._aead, name, value)),
            )

    def set(self, name: str, value: Any) -> None:
        self.update(name, lambda _old: value)

    def update(self, name: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        with self._store.transaction() as conn:
            conn.lock(f"vault {name}")  # also when there is no row yet to lock
            row = conn.query_one("SELECT sealed FROM vault_entries WHERE name = ?", (name,))
            value = change(self._open(name, row["sealed"]) if row else copy.deepcopy(default))
            conn.execute(
                "INSERT INTO vault_entries (name, sealed) VALUES (?, ?) ON CONFLICT (name)"
                " DO UPDATE SET sealed = excluded.sealed",
                (name, _seal(self._aead, name, value)),
            )
        return value

    def setdefault(self, name: str, value: Any) -> Any:
        return self.update(name, lambda old: value if old is None else old)


# Entries each primary of a shared fleet has for itself: its server certificate's key
# (each primary has its own names). Everything else in its vault is the fleet's.
LOCAL_ENTRIES = frozenset({"server_key"})


class FleetVault:
    """A primary's view of a shared fleet's vault: its LOCAL_ENTRIES from the vault file in
    its data dir, the rest from the store."""

    def __init__(self, shared: StoreVault, local: Vault):
        self.shared = shared
        self.local = local

    def _of(self, name: str):
        return self.local if name in LOCAL_ENTRIES else self.shared

    def get(self, name: str) -> Any:
        return self._of(name).get(name)

    def set(self, name: str, value: Any) -> None:
        self._of(name).set(name, value)

    def update(self, name: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        return self._of(name).update(name, change, default)

    def setdefault(self, name: str, value: Any) -> Any:
        return self._of(name).setdefault(name, value)
