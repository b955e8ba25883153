"""Workers: registration, identity on the agent port, and what the admin API shows."""

import datetime
import hmac
import json
import secrets
import time
from typing import Any

from agent.protocol import CODE_UNKNOWN_WORKER, NAME_RE
from primary.ca import CsrError
from primary.context import Primary
from primary.errors import BadRequest, Forbidden, NotFound, Unauthorized, conflict
from primary.initdir import new_worker_secret
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


def worker_state(primary: Primary, row: dict, now: float) -> str:
    """One word for people, derived exactly as the planner sees the worker."""
    from primary.scheduler import candidate_from_row, state_word

    return state_word(candidate_from_row(row, 0, now, primary.config.heartbeat_timeout))


def describe(primary: Primary, row: dict, used: int, now: float) -> dict:
    return {
        "id": row["id"],
        "name": row["name"],
        "tags": json.loads(row["tags"]),
        "slots": row["slots"],
        "slots_used": used,
        "state": worker_state(primary, row, now),
        "locked": bool(row["locked"]),
        "draining": bool(row["draining"]),
        "load": json.loads(row["load"]) if row["load"] else None,
        "version": row["version"],
        "last_contact": iso(row["last_contact"]),
        "created_at": iso(row["created_at"]),
        "certificate_expires": iso(row["cert_not_after"]),
    }


def slots_used(primary: Primary) -> dict[str, int]:
    """Runs each worker holds (assigned or running): the slots it has in use."""
    rows = primary.store.query(
        "SELECT worker_id, COUNT(*) AS n FROM runs WHERE state IN ('assigned', 'running')"
        " GROUP BY worker_id"
    )
    return {r["worker_id"]: r["n"] for r in rows}


def list_workers(primary: Primary) -> list[dict]:
    used = slots_used(primary)
    now = time.time()
    rows = primary.store.query("SELECT * FROM workers ORDER BY name")
    return [describe(primary, dict(r), used.get(r["id"], 0), now) for r in rows]


def get_worker(primary: Primary, worker_id: str) -> dict:
    row = primary.store.query_one(
        "SELECT * FROM workers WHERE id = ? OR name = ?", (worker_id, worker_id)
    )
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    return describe(primary, dict(row), slots_used(primary).get(row["id"], 0), time.time())


def _worker_row(conn, worker_id: str):
    row = conn.execute(
        "SELECT * FROM workers WHERE id = ? OR name = ?", (worker_id, worker_id)
    ).fetchone()
    if row is None:
        raise NotFound(f"no worker {worker_id!r}")
    return row


# Admin actions on a worker's flags, by name: (flag, on).
FLAG_ACTIONS = {
    "lock": ("locked", True),
    "unlock": ("locked", False),
    "drain": ("draining", True),
    "flood": ("draining", False),
}


def set_flag(primary: Primary, worker_id: str, flag: str, on: bool) -> dict:
    """Lock/unlock or drain/flood. A locked or draining worker takes no new runs and finishes
    those it has; runs planned for it but not yet confirmed are planned again elsewhere."""
    from primary.scheduler import plan, requeue

    assert flag in ("locked", "draining")
    with primary.store.transaction() as conn:
        row = _worker_row(conn, worker_id)
        conn.execute(f"UPDATE workers SET {flag} = ? WHERE id = ?", (int(on), row["id"]))
        if on:
            planned = conn.execute(
                "SELECT id FROM runs WHERE worker_id = ? AND state = 'assigned'", (row["id"],)
            ).fetchall()
            for run in planned:
                requeue(conn, run["id"], f"re-planned: {row['name']} is {flag}", time.time())
    primary.waiters.wake(row["id"])  # an agent holding a taken-back assignment drops it
    plan(primary)
    return get_worker(primary, row["id"])


def set_tags(primary: Primary, worker_id: str, tags: object) -> dict:
    """Change a worker's tags; the next scheduling decision uses them."""
    from primary.scheduler import plan

    if (
        not isinstance(tags, list)
        or len(tags) > MAX_TAGS
        or not all(isinstance(t, str) and NAME_RE.match(t) for t in tags)
    ):
        raise BadRequest("tags: must be a list of names (letters, digits, '.', '_', '-')")
    with primary.store.transaction() as conn:
        row = _worker_row(conn, worker_id)
        conn.execute(
            "UPDATE workers SET tags = ? WHERE id = ?", (json.dumps(sorted(set(tags))), row["id"])
        )
    plan(primary)
    return get_worker(primary, row["id"])


def update_from_host(primary: Primary, worker: dict, body: dict) -> dict:
    """`cifleet-agent update-worker` on the host: drain/flood, tags, slots of this worker."""
    from primary.scheduler import plan

    unknown = set(body) - {"draining", "tags", "slots"}
    if unknown:
        raise BadRequest(f"{sorted(unknown)[0]}: unknown field; expected draining, tags, slots")
    if "draining" in body and not isinstance(body["draining"], bool):
        raise BadRequest("draining: must be true or false")
    slots = body.get("slots")
    if "slots" in body and (
        not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= MAX_SLOTS
    ):
        raise BadRequest(f"slots: must be a whole number from 1 to {MAX_SLOTS}")
    if "tags" in body:
        set_tags(primary, worker["id"], body["tags"])
    if "slots" in body:
        with primary.store.transaction() as conn:
            conn.execute("UPDATE workers SET slots = ? WHERE id = ?", (slots, worker["id"]))
    if "draining" in body:
        return set_flag(primary, worker["id"], "draining", body["draining"])
    plan(primary)
    return get_worker(primary, worker["id"])


def delete_worker(primary: Primary, worker_id: str) -> dict:
    """De-register: the record goes, and with it the only certificate serial the agent port
    accepts for it, so every later request with that certificate is refused at once. Its
    runs are re-queued (or end as lost, by retries_on_lost); pipelines whose home it was
    start clean elsewhere."""
    from primary.scheduler import lose, plan, requeue

    now = time.time()
    with primary.store.transaction() as conn:
        row = _worker_row(conn, worker_id)
        for run in conn.execute(
            "SELECT id, state, spec, lost_count FROM runs WHERE worker_id = ?"
            " AND state IN ('assigned', 'running')",
            (row["id"],),
        ).fetchall():
            if run["state"] == "assigned":
                requeue(conn, run["id"], f"re-planned: worker {row['name']} was removed", now)
            else:
                lose(conn, run, f"worker {row['name']} was removed", now)
        conn.execute(
            "UPDATE pipelines SET home_worker_id = NULL WHERE home_worker_id = ?", (row["id"],)
        )
        conn.execute("DELETE FROM workers WHERE id = ?", (row["id"],))
    primary.waiters.wake(row["id"])  # its held poll answers now; the next one is refused
    plan(primary)
    return {"id": row["id"], "name": row["name"], "deleted": True}


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
