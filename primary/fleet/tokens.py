"""Admin API tokens: random strings handed out once, stored only as SHA-256 hashes."""

import hashlib
import secrets
import time

from primary.store.db import Connection, Store

# metrics: scrapers (Prometheus); it reads GET /metrics and nothing else.
ROLES = ("admin", "viewer", "metrics")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, name: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    with store.transaction() as conn:
        return insert_token(conn, name, role)


def insert_token(conn: Connection, name: str, role: str) -> str:
    """create_token in the caller's transaction."""
    token = "cft_" + secrets.token_urlsafe(32)
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


def token_name(store: Store, token: str) -> str | None:
    """The name a valid token was created with (what a run it triggers records)."""
    row = store.query_one(
        "SELECT name FROM tokens WHERE token_hash = ? AND revoked_at IS NULL", (hash_token(token),)
    )
    return row["name"] if row else None


def list_tokens(store: Store) -> list[dict]:
    """Every token's id, name, role and dates; never the token or its hash."""
    from primary.timestamps import iso

    rows = store.query("SELECT id, name, role, created_at, revoked_at FROM tokens ORDER BY id")
    return [
        {
            "id": r["id"],
            "name": r["name"],
            "role": r["role"],
            "created_at": iso(r["created_at"]),
            "revoked_at": iso(r["revoked_at"]),
        }
        for r in rows
    ]


def revoke_token(store: Store, token_id: int) -> bool:
    """Revoke by id; False when there is no such live token. It stops working at once."""
    with store.transaction() as conn:
        cur = conn.execute(
            "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), token_id),
        )
    return cur.rowcount == 1
