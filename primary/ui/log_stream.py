"""A run's log and state as Server-Sent Events, for the run page.

Each `log` event carries the text of a byte range of the run log (primary/runs/runlog.py) and
`id:` = the byte offset after it, so a browser that reconnects (EventSource sends the last
id as `Last-Event-ID`) resumes at exactly the next byte: nothing skipped, nothing repeated.
Ranges end on UTF-8 character boundaries, so decoding each one on its own (errors
replaced, for display only) shows what decoding the whole log would.

Threads: every open stream holds one thread of the public listener's fixed pool, so a
stream ends after `log_stream_seconds` (the browser reconnects and resumes), at once when
the run is final and its log fully sent, and at most `log_streams` are open at a time
(`StreamSlots`; the view answers others 503 with a `retry:` hint). Between reads a stream
waits on `primary.run_changed` (notified on every log append and state change), and reads
at most every MIN_READ_INTERVAL however busy the fleet is.
"""

import json
import threading
import time
from collections.abc import Iterator

from primary.context import Primary
from primary.ui.run_info import log_piece, run_state

# Bytes of log one event carries at most: a long backlog goes out as several events.
MAX_EVENT_BYTES = 64 << 10
MIN_READ_INTERVAL = 0.2
# A notification that comes between a read and the wait is missed; this bounds the delay.
WAKE_TIMEOUT = 1.0
# A comment this often when nothing else is sent: a closed browser is noticed at the next
# write, and proxies keep the connection.
HEARTBEAT_SECONDS = 5.0
# How long the browser waits before reconnecting after a stream ended (or was refused).
RETRY_MS = 1000
BUSY_RETRY_MS = 5000


def utf8_complete_end(data: bytes) -> int:
    """The length of `data` without a UTF-8 sequence cut short at its end (the rest of it
    may come with the next bytes). Invalid bytes count as complete: they are shown
    replaced. Pure."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the sequence started further back
        if byte >= 0xF8 or byte < 0xC0:
            return len(data)  # ASCII or not a lead byte at all
        needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return len(data) - back if needed > back else len(data)
    return len(data)


def sse_event(event: str, data: dict, event_id: int | None = None) -> bytes:
    """One event in the text/event-stream format. The data is one line of JSON (JSON
    escapes CR and LF, which would otherwise end the line). Pure."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def busy_answer(streams: int) -> bytes:
    return (
        f"retry: {BUSY_RETRY_MS}\n: {streams} log streams are open, the most allowed\n\n".encode()
    )


class StreamSlots:
    """At most `size` streams open at once; a stream that finds none free is refused."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._open = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self._open >= self.size:
                return False
            self._open += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self._open -= 1


def read_log(primary: Primary, run_id: int, offset: int) -> tuple[bytes, bool, bool]:
    """The next piece of the run log from `offset`: at most MAX_EVENT_BYTES, ending on a
    character boundary unless it is the end of a complete log. Also whether more may be
    there already (a backlog), and whether the log ends with this piece."""
    piece, ends = log_piece(primary, run_id, offset, MAX_EVENT_BYTES)
    if ends:
        return piece, False, True
    return piece[: utf8_complete_end(piece)], len(piece) == MAX_EVENT_BYTES, False


def follow(
    primary: Primary, run_id: int, offset: int, seconds: float, stop: threading.Event
) -> Iterator[bytes]:
    """The events of one stream: the run's state whenever it changed, its log from `offset`
    as it grows, and `end` once the run is final and all of its log was sent. Ends after
    `seconds` (the browser then reconnects from the last id), or within WAKE_TIMEOUT of
    `stop` (the primary shuts down: the server waits for its requests)."""
    deadline = time.monotonic() + seconds
    yield f"retry: {RETRY_MS}\n\n".encode()
    sent_state = None
    last_write = time.monotonic()
    while True:
        last_read = time.monotonic()
        piece, more, ends = read_log(primary, run_id, offset)
        state = run_state(primary, run_id)
        if state != sent_state:
            sent_state = state
            yield sse_event("state", state)
            last_write = time.monotonic()
        if piece:
            offset += len(piece)
            yield sse_event("log", {"text": piece.decode("utf-8", "replace")}, offset)
            last_write = time.monotonic()
        if ends:
            yield sse_event("end", {"offset": offset}, offset)
            return
        now = time.monotonic()
        if now >= deadline or stop.is_set():
            return
        if more:
            continue  # a backlog: send the rest without waiting
        if now - last_write >= HEARTBEAT_SECONDS:
            yield b": keep-alive\n\n"
            last_write = now
        with primary.run_changed:
            primary.run_changed.wait(min(WAKE_TIMEOUT, deadline - now))
        # Woken at once in a busy fleet (every append anywhere notifies): read at most
        # every MIN_READ_INTERVAL, so appends of the moment are read together.
        time.sleep(max(0.0, last_read + MIN_READ_INTERVAL - time.monotonic()))
