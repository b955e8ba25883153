"""Admin API tokens: random strings handed out once, stored only as SHA-256 hashes."""

import hashlib
import secrets
import time

from primary.store import Store

ROLES = ("admin", "viewer")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, name: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    token = "cft_" + secrets.token_urlsafe(32)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role, hash_token(token), time.time()),
        )
    return token


def role_of(store: Store, token: str) -> str | None:
    """The role behind a token, or None. The lookup is by hash of a 256-bit random string,
    so its timing tells an attacker nothing useful."""
    row = store.query_one(
        "SELECT role FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", (hash_token(token),)
    )
    return row["role"] if row else None
