"""People who log in (the web UI): a name, a role (as API tokens have), and a password kept
only as a salted scrypt hash."""

import hashlib
import hmac
import secrets
import time

from agent.protocol import NAME_RE
from primary.store.db import Store
from primary.timestamps import iso

# scrypt cost: about 50 ms and 16 MiB per check here; slows guessing, not a person.
_N, _R, _P = 2**14, 8, 1
MIN_PASSWORD = 12
# The roles of API tokens, but "metrics": that one is for scrapers, not people.
ROLES = ("admin", "viewer")


class UserError(ValueError):
    pass


def _hash(password: str, salt: bytes, n: int = _N, r: int = _R, p: int = _P) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def create_user(store: Store, name: str, role: str, password: str) -> None:
    if not NAME_RE.match(name):
        raise UserError("name: must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"role: must be one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"password: must be at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    stored = f"scrypt${_N}${_R}${_P}${salt.hex()}${_hash(password, salt).hex()}"
    with store.transaction() as conn:
        if conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
            raise UserError(f"a user named {name!r} exists")
        conn.execute(
            "INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
            (name, role, stored, time.time()),
        )


def check_password(store: Store, name: str, password: str) -> str | None:
    """The user's role if the password is right and the user is not disabled, else None.
    An unknown name costs a hash too, so timing does not tell which names exist."""
    row = store.query_one(
        "SELECT role, password_hash FROM users WHERE name = ? AND disabled_at IS NULL", (name,)
    )
    stored = row["password_hash"] if row else f"scrypt${_N}${_R}${_P}${'00' * 16}${'00' * 32}"
    _, n, r, p, salt, expected = stored.split("$")
    actual = _hash(password, bytes.fromhex(salt), int(n), int(r), int(p))
    if hmac.compare_digest(actual, bytes.fromhex(expected)) and row is not None:
        return row["role"]
    return None


def list_users(store: Store) -> list[dict]:
    return [
        {
            "name": r["name"],
            "role": r["role"],
            "created_at": iso(r["created_at"]),
            "disabled_at": iso(r["disabled_at"]),
        }
        for r in store.query("SELECT * FROM users ORDER BY name")
    ]


def disable_user(store: Store, name: str) -> bool:
    with store.transaction() as conn:
        cur = conn.execute(
            "UPDATE users SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL",
            (time.time(), name),
        )
    return cur.rowcount == 1
