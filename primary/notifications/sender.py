"""The sender: one thread per primary that claims due notifications from the outbox and
posts them from a small pool, so a slow receiver delays only its own deliveries and never
the scheduler. With several primaries each claims rows for a while (`claimed_until`, a
conditional UPDATE), so a notification is posted by one of them at a time; one whose sender
died mid-post is claimed again when the claim runs out."""

import http.client
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from primary.context import Primary
from primary.errors import ApiError
from primary.notifications import delivery
from primary.notifications.outbox import NotificationQueued
from primary.pipelines import secrets

log = logging.getLogger("cifleet.primary")
POSTS_AT_ONCE = 4
TIMEOUT = 10.0  # connect, and each read of the answer
CLAIM_SECONDS = 4 * TIMEOUT  # longer than a post can take
IDLE_WAIT = 2.0  # another primary's new rows are seen this late at worst
MAX_ANSWER = 4096  # of the receiver's answer body, kept for last_error


class NotificationSender:
    def __init__(self, primary: Primary, stop: threading.Event) -> None:
        self._primary = primary
        self._stop = stop
        self._wake = threading.Event()
        self._free = threading.Semaphore(POSTS_AT_ONCE)
        self._pool = ThreadPoolExecutor(POSTS_AT_ONCE, thread_name_prefix="notify")
        self._tls = ssl.create_default_context()
        primary.store.commit_listeners.append(self._on_commit)

    def _on_commit(self, notes: list) -> None:
        if any(isinstance(n, NotificationQueued) for n in notes):
            self._wake.set()

    def run(self) -> None:
        """Until `stop`: claim what is due, as many as there are free posters."""
        try:
            while not self._stop.is_set():
                claimed = []
                try:
                    claimed = self._claim()
                except ApiError as e:  # the store is unreachable: try again later
                    log.warning("notifications: cannot claim: %s", e.message)
                except Exception:
                    log.exception("notifications: claiming failed")
                for row in claimed:
                    self._pool.submit(self._deliver, row)
                if not claimed:
                    self._wake.wait(IDLE_WAIT)
                    self._wake.clear()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _claim(self) -> list[dict]:
        now = time.time()
        free = 0
        while free < POSTS_AT_ONCE and self._free.acquire(blocking=False):
            free += 1
        if not free:
            self._stop.wait(0.05)  # every poster is busy
            return []
        due_clause = (
            "delivered_at IS NULL AND gave_up_at IS NULL AND next_at <= ?"
            " AND (claimed_until IS NULL OR claimed_until < ?)"
        )
        claimed: list[dict] = []
        try:
            due = self._primary.store.query(
                f"SELECT id FROM notifications WHERE {due_clause} ORDER BY next_at, id LIMIT ?",
                (now, now, free),
            )
            for row in due:
                with self._primary.store.transaction() as conn:
                    got = conn.execute(
                        f"UPDATE notifications SET claimed_until = ? WHERE id = ? AND {due_clause}"
                        " RETURNING *",
                        (now + CLAIM_SECONDS, row["id"], now, now),
                    ).fetchall()
                claimed += [dict(r) for r in got]  # none: another primary took it first
        finally:
            for _ in range(free - len(claimed)):
                self._free.release()
        return claimed

    def _deliver(self, row: dict) -> None:
        try:
            status, error = self._post(row)
            self._record(row, status, error)
        except Exception:
            log.exception("notifications: delivery %d failed", row["id"])
        finally:
            self._free.release()
            self._wake.set()  # a poster is free: more may be due

    def _post(self, row: dict) -> tuple[int | None, str | None]:
        """(HTTP status, None) once answered; (status or None, why) when not delivered."""
        secret = None
        if row["secret"] is not None:
            secret = secrets.value(self._primary, row["pipeline"], row["secret"])
            if secret is None:
                return None, f"the pipeline secret {row['secret']} is not set"
        body = row["body"].encode()
        parts = urlsplit(row["url"])
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=TIMEOUT, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers=delivery.headers(row["id"], row["event"], body, secret),
            )
            answer = conn.getresponse()
            text = answer.read(MAX_ANSWER)
        except (OSError, http.client.HTTPException) as e:
            # Said by host only: the URL's path or query may carry a token (chat webhooks).
            return None, f"{parts.hostname}: {type(e).__name__}: {e}"[:500]
        finally:
            conn.close()
        if delivery.delivered(answer.status):
            return answer.status, None
        return answer.status, f"HTTP {answer.status}: {text.decode('utf-8', 'replace')}"[:500]

    def _record(self, row: dict, status: int | None, error: str | None) -> None:
        now = time.time()
        attempts = row["attempts"] + 1
        with self._primary.store.transaction() as conn:
            if error is None:
                conn.execute(
                    "UPDATE notifications SET delivered_at = ?, attempts = ?, last_status = ?,"
                    " last_error = NULL, claimed_until = NULL WHERE id = ?",
                    (now, attempts, status, row["id"]),
                )
                return
            gave_up = now if attempts >= delivery.MAX_ATTEMPTS else None
            next_at = now + delivery.retry_delay(
                attempts, self._primary.config.notify_retry_seconds
            )
            conn.execute(
                "UPDATE notifications SET attempts = ?, last_status = ?, last_error = ?,"
                " next_at = ?, gave_up_at = ?, claimed_until = NULL WHERE id = ?",
                (attempts, status, error, next_at, gave_up, row["id"]),
            )
        log.warning(
            "notification %d (run %d, %s): attempt %d failed: %s%s",
            row["id"],
            row["run_id"],
            row["event"],
            attempts,
            error,
            "; giving up" if gave_up else "",
        )


def start_sender(primary: Primary, stop: threading.Event) -> threading.Thread:
    sender = NotificationSender(primary, stop)
    thread = threading.Thread(target=sender.run, name="notification-sender", daemon=True)
    thread.start()
    return thread
