"""An encrypted JSON document on disk (AES-256-GCM).

The data key lives in `vault.key` (0600) beside it, or in the CIFLEET_VAULT_KEY environment
variable (hex) so an operator can keep it off the disk. It is not derived from the CA key.
"""

import copy
import fcntl
import json
import os
import secrets
import threading
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

    def set(self, name: str, value: Any) -> None:
        lock_path = self._path.with_name(self._path.name + ".lock")
        with self._lock, open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._refresh()
            self._data[name] = value
            self._save()

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
