"""Worker identity: the worker secret, registration (a CSR signed into a client
certificate), who a certificate on the agent port belongs to, and renewal."""

import datetime
import hmac
import json
import secrets
import time
from typing import Any

from agent.protocol import CODE_UNKNOWN_WORKER, NAME_RE
from primary.context import Primary
from primary.errors import BadRequest, Forbidden, Unauthorized, conflict
from primary.fleet.ca import CsrError
from primary.fleet.initdir import new_worker_secret
from primary.timestamps import iso

MAX_SLOTS = 64
MAX_TAGS = 32


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
    name = body.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadRequest("name: must be 1-64 letters, digits, '.', '_' or '-'")
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
    if primary.store.query_one("SELECT 1 FROM workers WHERE name = ?", (name,)):
        raise conflict("name_taken", f"a worker named {name!r} is already registered")
    worker_id = "w-" + secrets.token_hex(8)
    lifetime = datetime.timedelta(days=primary.config.worker_cert_days)
    try:
        issued = primary.ca.issue_worker(csr, worker_id, lifetime)
    except CsrError as exc:
        raise BadRequest(f"csr: {exc}") from None
    now = time.time()
    with primary.store.transaction() as conn:
        # The UNIQUE constraint settles a race between two registrations of one name.
        if conn.execute("SELECT 1 FROM workers WHERE name = ?", (name,)).fetchone():
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


def authenticate(primary: Primary, worker_id: str | None, serial: str | None) -> dict:
    """The worker behind a verified client certificate, or 403.

    TLS only proves the certificate was signed by our CA; the worker must still exist and
    this must be the certificate we issued it last — or, after a renewal, the one before it
    until it expires, so connections the agent opened with it finish their work."""
    row = None
    if worker_id and serial:
        row = primary.store.query_one("SELECT * FROM workers WHERE id = ?", (worker_id,))
    now = time.time()
    if (
        row is not None
        and row["prev_cert_serial"]
        and _same_serial(row["prev_cert_serial"], serial)
    ) and row["prev_cert_not_after"] >= now:
        return dict(row)
    if row is None or not _same_serial(row["cert_serial"], serial):
        err = Forbidden("this certificate does not belong to a registered worker")
        err.code = CODE_UNKNOWN_WORKER
        raise err
    if row["cert_not_after"] < now:
        err = Forbidden("this worker's certificate has expired")
        err.code = CODE_UNKNOWN_WORKER
        raise err
    return dict(row)


def _same_serial(a: str, b: str) -> bool:
    try:
        return int(a, 16) == int(b, 16)
    except ValueError:
        return False


def renew_certificate(primary: Primary, worker: dict, body: dict) -> dict:
    """Sign a new CSR for the calling worker (mutual TLS proves it holds the current key).
    The previous certificate stays valid until it expires; the one before it is dropped."""
    csr = body.get("csr")
    if not isinstance(csr, str):
        raise BadRequest("csr: must be a PEM certificate signing request")
    lifetime = datetime.timedelta(days=primary.config.worker_cert_days)
    try:
        issued = primary.ca.issue_worker(csr, worker["id"], lifetime)
    except CsrError as exc:
        raise BadRequest(f"csr: {exc}") from None
    with primary.store.transaction() as conn:
        conn.execute(
            "UPDATE workers SET prev_cert_serial = cert_serial,"
            " prev_cert_not_after = cert_not_after, cert_serial = ?, cert_not_after = ?"
            " WHERE id = ?",
            (issued.serial, issued.not_after.timestamp(), worker["id"]),
        )
    return {"certificate": issued.pem, "expires": iso(issued.not_after.timestamp())}
