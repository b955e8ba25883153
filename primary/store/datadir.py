"""Where the primary keeps its files, and which store its fleet is in."""

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def vault(self) -> Path:
        return self.root / "vault.bin"

    @property
    def vault_key(self) -> Path:
        return self.root / "vault.key"

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def admin_token(self) -> Path:
        return self.root / "admin.token"

    @property
    def store(self) -> Path:
        """The SQLite store (when the config names no other)."""
        return self.root / "cifleet.db"

    @property
    def config(self) -> Path:
        """What `init` chose: {"store": URL} for a fleet in PostgreSQL, {"name": ...}."""
        return self.root / "config.json"

    def settings(self) -> dict:
        try:
            return json.loads(self.config.read_text())
        except FileNotFoundError:
            return {}

    def store_location(self) -> str:
        """The PostgreSQL URL the config names, else the path of the SQLite file."""
        return self.settings().get("store") or str(self.store)

    def shared_store(self) -> bool:
        """Whether the fleet is in a shared database (its vault, logs and CA there)."""
        return bool(self.settings().get("store"))

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def builtin_worker_home(self) -> Path:
        return self.root / "builtin-worker"

    @property
    def serve_info(self) -> Path:
        """Where a serving primary says how to reach it (pid, api_url, both ports), once both
        its listeners serve: for the CLI, operators' tooling and tests."""
        return self.root / "serve.json"

    @property
    def pidfile(self) -> Path:
        return self.root / "primary.pid"

    def is_initialised(self) -> bool:
        return self.vault.exists() and (self.store.exists() or self.shared_store())
