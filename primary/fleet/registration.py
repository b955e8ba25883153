"""Worker registration: the worker secret, and a CSR signed into a client certificate for a
new worker record. Who a certificate belongs to later, and renewal: fleet/credentials.py."""

import datetime
import hmac
import json
import re
import secrets
import time
from typing import Any

from agent.protocol import NAME_RE
from primary.context import Primary
from primary.errors import BadRequest, Unauthorized, conflict
from primary.fleet.ca import CsrError
from primary.fleet.initdir import new_worker_secret

MAX_SLOTS = 64
MAX_TAGS = 32
# The form of the ids the primary gives workers (w- and 16 hex digits). No name may take
# it: admin lookups accept an id or a name, and an impostor's name must never hit a worker.
WORKER_ID_RE = re.compile(r"^w-[0-9a-f]{16}$", re.IGNORECASE)


def check_name(name: Any) -> str:
    """A worker name as registration accepts it, or 400."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest("name: must be 1-64 letters, digits, '.', '_' or '-'")
    if WORKER_ID_RE.match(name):
        raise BadRequest("name: must not look like a worker id (w- and 16 hex digits)")
    return name


def name_taken(db, name: str) -> bool:
    """Names are unique without regard to case: `Builder-1` is taken by `builder-1`. `db`:
    the store, or a transaction's connection."""
    return db.query_one("SELECT 1 FROM workers WHERE lower(name) = lower(?)", (name,)) is not None


def check_secret(primary: Primary, secret: Any) -> None:
    expected = primary.vault.get("worker_secret")
    if not isinstance(secret, str) or not hmac.compare_digest(secret.encode(), expected.encode()):
        err = Unauthorized("the worker secret is missing or wrong")
        err.code = "bad_secret"
        raise err


def rotate_secret(primary: Primary) -> str:
    """Replace the worker secret; registered workers stay connected (they use certificates).
    Returns the new secret."""
    secret = new_worker_secret()
    primary.vault.set("worker_secret", secret)
    return secret


def _validate_registration(body: dict) -> tuple[str, list[str], int, str, str]:
    name = check_name(body.get("name"))
    tags = body.get("tags", [])
    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and NAME_RE.match(t) for t in tags)
    ):
        raise BadRequest("tags: must be a list of names (letters, digits, '.', '_', '-')")
    slots = body.get("slots", 1)
    if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS:
        raise BadRequest(f"slots: must be a whole number from 1 to {MAX_SLOTS}")
    version = body.get("version")
    if not isinstance(version, str) or not 0 < len(version) <= 64:
        raise BadRequest("version: must be a string")
    csr = body.get("csr")
    if not isinstance(csr, str):
        raise BadRequest("csr: must be a PEM certificate signing request")
    return name, sorted(set(tags)), slots, version, csr


def register(primary: Primary, body: dict) -> dict:
    """Check the secret, sign the CSR, create the worker. Raises ApiError."""
    check_secret(primary, body.get("secret"))
    name, tags, slots, version, csr = _validate_registration(body)
    if name_taken(primary.store, name):
        raise conflict("name_taken", f"a worker named {name!r} is already registered")
    worker_id = "w-" + secrets.token_hex(8)
    lifetime = datetime.timedelta(days=primary.config.worker_cert_days)
    try:
        issued = primary.ca.issue_worker(csr, worker_id, lifetime)
    except CsrError as exc:
        raise BadRequest(f"csr: {exc}") from None
    now = time.time()
    with primary.store.transaction() as conn:
        # The unique index settles a race between two registrations of one name.
        if name_taken(conn, name):
            raise conflict("name_taken", f"a worker named {name!r} is already registered")
        conn.execute(
            "INSERT INTO workers (id, name, tags, slots, version, cert_serial, cert_not_after,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                worker_id,
                name,
                json.dumps(tags),
                slots,
                version,
                issued.serial,
                issued.not_after.timestamp(),
                now,
            ),
        )
    return {
        "worker_id": worker_id,
        "certificate": issued.pem,
        "ca_certificate": primary.ca.cert_pem,
    }
