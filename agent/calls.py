"""One call to the primary on behalf of a run, retried until the primary answers.

Transport errors, 5xx and 429 are retried with jittered backoff; the answers that end a
run's delivery for good become exceptions. Used by the reporter (delivery thread) and by the
static-file fetch (executor thread), each with its own Client.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.backoff import Backoff
from agent.client import Client, Response, TransportError
from agent.protocol import CODE_STALE_ATTEMPT, CODE_UNKNOWN_WORKER, REFUSED_CODES

log = logging.getLogger(__name__)

_WAIT_SLICE = 0.1  # how often a backoff pause looks at the cancel event


class Stale(Exception):
    """409 stale_attempt: the primary took this attempt back; drop the run."""


class UnknownWorker(Exception):
    """403: the primary refuses this worker's certificate. `code` says why: unknown_worker
    (removed or revoked) or credentials_conflict (a copy of its key was used)."""

    def __init__(self, code: str = CODE_UNKNOWN_WORKER, message: str = "") -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message


class Refused(Exception):
    """The primary refused a call for good (a 4xx we cannot act on); drop the run."""


class Stopped(Exception):
    """The agent is stopping before delivery was done."""


class Cancelled(Exception):
    """The run was cancelled while a call was still being retried."""


def call(
    client: Client,
    method: str,
    path: str,
    payload: dict[str, Any] | bytes,
    *,
    stop: threading.Event,
    label: str,
    content_type: str = "application/json",
    cancel: threading.Event | None = None,
    backoff: Callable[[], Backoff] = Backoff,
) -> Response:
    """Send until the primary answers with something other than 5xx or 429.

    Raises UnknownWorker and Stale for those answers, Stopped when `stop` is set and
    Cancelled when `cancel` is set while retrying. `label` names the run in log lines.
    """
    delays = backoff()
    failing = False
    while True:
        _check(stop, cancel)
        try:
            if isinstance(payload, bytes):
                resp = client.request(method, path, payload, content_type)
            else:
                resp = client.post_json(path, payload)
        except TransportError as e:
            problem = f"cannot reach the primary: {e}"
        else:
            if resp.status == 403 and resp.code in REFUSED_CODES:
                raise UnknownWorker(resp.code, resp.message)
            if resp.status == 409 and resp.code == CODE_STALE_ATTEMPT:
                raise Stale()
            if resp.status < 500 and resp.status != 429:
                if failing:
                    log.info("%s: reaching the primary again", label)
                return resp
            problem = f"the primary answered HTTP {resp.status}"
        # First failure of a streak is a warning; the retries after it are noise.
        log.log(logging.DEBUG if failing else logging.WARNING, "%s: %s; retrying", label, problem)
        failing = True
        _pause(delays.next_delay(), stop, cancel)


def _check(stop: threading.Event, cancel: threading.Event | None) -> None:
    if stop.is_set():
        raise Stopped()
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def _pause(seconds: float, stop: threading.Event, cancel: threading.Event | None) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        _check(stop, cancel)
        stop.wait(min(left, _WAIT_SLICE))
    _check(stop, cancel)
