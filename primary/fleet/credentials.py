"""Who a certificate on the agent port belongs to, renewal, and catching a copied key.

TLS proves a certificate was signed by our CA, and our CA signs only certificates whose
subject CN is the worker id the primary chose; so a CA-signed certificate naming an existing
worker is one the primary issued to that worker. Which of them it accepts:

- the current one (the last issued), until it expires;
- the previous one, for the switch-over window after a renewal (`--cert-switch-over`), so
  requests the agent sent with it before it had the new pair are still answered.

Anything else is the refresh-token-reuse rule of OAuth: once a renewal has issued a new
certificate, the superseded one used after the switch-over (or any older one, or a second
renewal from the superseded one) means two agents hold this worker's key. Nobody can tell
which is the genuine one, so the worker's credentials are marked in conflict: every
certificate of the worker is refused (403 credentials_conflict), its runs go back to the
queue, the Workers page and the API say why, and an admin registers it anew.
"""

import datetime
import logging
import time

from agent.protocol import CODE_CREDENTIALS_CONFLICT, CODE_UNKNOWN_WORKER
from primary.context import Primary
from primary.errors import BadRequest, Forbidden
from primary.fleet import worker_history
from primary.fleet.ca import CsrError
from primary.fleet.workers import take_runs_back
from primary.runs.scheduler import PLANNER_LOCK, plan
from primary.timestamps import iso

log = logging.getLogger("cifleet.primary")

CURRENT, PREVIOUS = "current", "previous"


def _refused(code: str, message: str) -> Forbidden:
    err = Forbidden(message)
    err.code = code
    return err


def conflict_error(row) -> Forbidden:
    return _refused(
        CODE_CREDENTIALS_CONFLICT,
        f"the credentials of worker {row['name']} are in conflict: {row['conflict_reason']}."
        " Every certificate of this worker is refused; an admin removes the worker and"
        " registers its host again",
    )


def authenticate(primary: Primary, worker_id: str | None, serial: str | None) -> dict:
    """The worker behind a verified client certificate, with `cert` (current or previous),
    or 403: unknown_worker when no such worker exists (removed), credentials_conflict when
    this certificate was superseded, or the worker is in conflict already."""
    row = None
    if worker_id and serial:
        row = primary.store.query_one("SELECT * FROM workers WHERE id = ?", (worker_id,))
    if row is None:
        raise _refused(
            CODE_UNKNOWN_WORKER, "this certificate does not belong to a registered worker"
        )
    if row["conflict_at"] is not None:
        raise conflict_error(row)
    now = time.time()
    if _same_serial(row["cert_serial"], serial):
        if row["cert_not_after"] < now:
            raise _refused(CODE_UNKNOWN_WORKER, "this worker's certificate has expired")
        return {**dict(row), "cert": CURRENT}
    renewed = row["cert_renewed_at"]
    in_window = renewed is not None and now <= renewed + primary.config.cert_switch_over
    if row["prev_cert_serial"] and _same_serial(row["prev_cert_serial"], serial) and in_window:
        return {**dict(row), "cert": PREVIOUS}
    when = "after the switch-over" if renewed is not None else "after a newer one was issued"
    raise mark_conflict(
        primary,
        row,
        f"a certificate a renewal had superseded (serial {serial}) was used {when}, so two"
        " agents hold this worker's key",
    )


def _same_serial(a: str | None, b: str | None) -> bool:
    try:
        return a is not None and b is not None and int(a, 16) == int(b, 16)
    except ValueError:
        return False


def mark_conflict(primary: Primary, row, reason: str) -> Forbidden:
    """Refuse every certificate of the worker from now on, and take its runs back; returns
    the error to answer with. Idempotent: the first reason stays."""
    now = time.time()
    with primary.store.transaction() as conn:
        conn.lock(PLANNER_LOCK)  # the worker takes no new runs: no assignment slips past
        current = conn.query_one("SELECT * FROM workers WHERE id = ? FOR UPDATE", (row["id"],))
        if current is None:
            return _refused(CODE_UNKNOWN_WORKER, "this certificate does not belong to a worker")
        if current["conflict_at"] is None:
            conn.execute(
                "UPDATE workers SET conflict_at = ?, conflict_reason = ? WHERE id = ?",
                (now, reason, row["id"]),
            )
            take_runs_back(conn, current, f"the credentials of {row['name']} are in conflict", now)
            log.error("worker %s (%s): credentials in conflict: %s", row["name"], row["id"], reason)
        current = conn.query_one("SELECT * FROM workers WHERE id = ?", (row["id"],))
    primary.waiters.wake(row["id"])  # a held poll of either holder answers, then is refused
    plan(primary)
    worker_history.record(primary, row["id"])
    return conflict_error(current)


def renew_certificate(primary: Primary, worker: dict, body: dict) -> dict:
    """Sign a new CSR for the calling worker, proven by its current key. A renewal from the
    superseded certificate is the second use of a spent credential: a conflict."""
    if worker["cert"] != CURRENT:
        raise mark_conflict(
            primary,
            worker,
            "a second renewal came from the certificate a renewal had already superseded, so"
            " two agents hold this worker's key",
        )
    csr = body.get("csr")
    if not isinstance(csr, str):
        raise BadRequest("csr: must be a PEM certificate signing request")
    lifetime = datetime.timedelta(days=primary.config.worker_cert_days)
    try:
        issued = primary.ca.issue_worker(csr, worker["id"], lifetime)
    except CsrError as exc:
        raise BadRequest(f"csr: {exc}") from None
    with primary.store.transaction() as conn:
        renewed = conn.execute(
            "UPDATE workers SET prev_cert_serial = cert_serial,"
            " prev_cert_not_after = cert_not_after, cert_serial = ?, cert_not_after = ?,"
            " cert_renewed_at = ? WHERE id = ? AND cert_serial = ? AND conflict_at IS NULL",
            (
                issued.serial,
                issued.not_after.timestamp(),
                time.time(),
                worker["id"],
                worker["cert_serial"],
            ),
        ).rowcount
    if not renewed:  # another renewal from the same certificate got in first
        raise mark_conflict(
            primary, worker, "two renewals came from one certificate, so two agents hold its key"
        )
    # A poll held on the superseded certificate answers now; the next one on it is held
    # only to the end of the switch-over (api/long_poll.py), so a thief's renewal is found
    # out within two polls, not two holds.
    primary.waiters.wake(worker["id"])
    return {"certificate": issued.pem, "expires": iso(issued.not_after.timestamp())}
