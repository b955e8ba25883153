"""Read helpers for the Pipelines and Runs pages: what only the UI shows, on top of the
services (primary/runs/runs.py, primary/pipelines/pipelines.py, primary/fleet/workers.py)."""

import re
import zlib
from collections.abc import Iterator

from primary.context import Primary
from primary.fleet import workers
from primary.runs.runlog import prepare_lines as attempt_prepare_lines
from primary.runs.runlog import run_log
from primary.runs.runs import FINAL_STATES
from primary.ui import ansi_state


def run_state(primary: Primary, run_id: int) -> dict:
    """What the run page shows live: state, reason, attempt, worker and each job's state.
    Small and cheap: a log stream compares it after every read and sends it when changed."""
    row = primary.store.query_one(
        "SELECT state, reason, attempt, worker_name, cancel_requested FROM runs WHERE id = ?",
        (run_id,),
    )
    if row is None:
        return {}
    jobs = primary.store.query(
        "SELECT name, state FROM jobs WHERE run_id = ? ORDER BY position", (run_id,)
    )
    return {
        "state": row["state"],
        "final": row["state"] in FINAL_STATES,
        "reason": row["reason"],
        "attempt": row["attempt"],
        "worker": row["worker_name"],
        "cancel_requested": bool(row["cancel_requested"]),
        "jobs": {j["name"]: j["state"] for j in jobs},
    }


def prepare_lines(primary: Primary, run: dict) -> list[str]:
    """The Prepare environment section of the run's current attempt: where it went and why,
    then what the worker did before the first job (as in the run log)."""
    row = primary.store.query_one("SELECT prepare_notes FROM runs WHERE id = ?", (run["id"],))
    notes = row["prepare_notes"] if row else None
    return attempt_prepare_lines(run["placement"], run["worker_name"], notes)


def worker_names(primary: Primary) -> dict[str, str]:
    """Worker names by id."""
    return {w["id"]: w["name"] for w in workers.list_workers(primary)}


def last_runs(primary: Primary) -> dict[str, dict]:
    """Each pipeline's newest run: {pipeline: {"id", "state"}}."""
    rows = primary.store.query(
        "SELECT pipeline, id, state FROM runs"
        " WHERE id IN (SELECT MAX(id) FROM runs GROUP BY pipeline)"
    )
    return {r["pipeline"]: {"id": r["id"], "state": r["state"]} for r in rows}


def tail_start(primary: Primary, run: dict, keep: int) -> int:
    """Where the run page opens the run log: at 0, or for a long log at the start of a
    line about `keep` bytes before its end (a browser is no place for gigabytes; the raw
    log has everything)."""
    output = sum(sum(a["log_sizes"].values()) for a in run["attempts"])
    if output <= keep:
        return 0
    near = output - keep  # the log is longer than the output: this is at least `keep` back
    chunks, _ = run_log(primary, run["id"], near)
    seen = 0
    try:
        for chunk in chunks:
            newline = chunk.find(b"\n")
            if newline >= 0:
                return near + seen + newline + 1
            seen += len(chunk)
            if seen > keep:
                break
    finally:
        chunks.close()
    return near


def queue_positions(primary: Primary) -> dict[int, int]:
    """Each queued run's place in the queue (1: planned first), in the order the scheduler
    takes them (by id)."""
    rows = primary.store.query("SELECT id FROM runs WHERE state = 'queued' ORDER BY id")
    return {r["id"]: i for i, r in enumerate(rows, 1)}


def run_count(primary: Primary, pipeline: str) -> int:
    row = primary.store.query_one("SELECT COUNT(*) AS n FROM runs WHERE pipeline = ?", (pipeline,))
    return row["n"]


def log_piece(primary: Primary, run_id: int, offset: int, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of the run log from `offset`, and whether they end the log of
    a finished run (nothing more will come)."""
    chunks, complete = run_log(primary, run_id, offset)
    piece = bytearray()
    try:
        for chunk in chunks:
            piece += chunk
            if len(piece) > limit:
                break
    finally:
        chunks.close()
    ends = complete and len(piece) <= limit
    return bytes(piece[:limit]), ends


def line_start_before(primary: Primary, run_id: int, end: int, back: int) -> int:
    """The start of the first whole line in the `back` bytes before `end` (0 when that
    reaches the start): where "load earlier" begins."""
    if end <= back:
        return 0
    piece, _ = log_piece(primary, run_id, end - back, back)
    newline = piece.find(b"\n")
    return end - back + newline + 1 if 0 <= newline < len(piece) - 1 else end - back


def ansi_before(primary: Primary, run_id: int, offset: int) -> dict:
    """The colours the run log has set at `offset` (primary/ui/ansi_state.py)."""
    return ansi_state.state_before(
        lambda start, size: log_piece(primary, run_id, start, size)[0], offset
    )


def lines_before(primary: Primary, run_id: int, offset: int) -> int:
    """How many lines the run log has before `offset` (the number of the line there, less
    one): read at the speed of the disk, once when a long log's page opens."""
    chunks, _ = run_log(primary, run_id, 0)
    count, seen = 0, 0
    try:
        for chunk in chunks:
            count += chunk.count(b"\n", 0, max(0, offset - seen))
            seen += len(chunk)
            if seen >= offset:
                break
    finally:
        chunks.close()
    return count


# Escape sequences, as ansi.js drops them: CSI, OSC (ended by BEL or ESC \\), nF, two-byte.
ESCAPE = re.compile(rb"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[ -/]+[0-~]|[0-~])")


def search_log(primary: Primary, run_id: int, query: str, most: int) -> dict:
    """The lines of the whole run log that contain `query` (case-insensitive, escape codes
    left out): at most `most`, each with its number, byte offset and text. Read once, a
    chunk at a time (never the whole log in memory)."""
    needle = query.casefold()
    chunks, _ = run_log(primary, run_id, 0)
    matches, number, offset, carry = [], 0, 0, b""
    try:
        for chunk in chunks:
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()
            for line in lines:
                number += 1
                text = ESCAPE.sub(b"", line).decode("utf-8", "replace")
                if needle in text.casefold():
                    matches.append({"line": number, "offset": offset, "text": text[:500]})
                    if len(matches) >= most:
                        return {"matches": matches, "complete": False}
                offset += len(line) + 1
        if carry:
            text = ESCAPE.sub(b"", carry).decode("utf-8", "replace")
            if needle in text.casefold():
                matches.append({"line": number + 1, "offset": offset, "text": text[:500]})
    finally:
        chunks.close()
    return {"matches": matches, "complete": True}


def gzip_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The chunks as one gzip stream, compressed as they come (never all in memory)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    try:
        for chunk in chunks:
            out = compressor.compress(chunk)
            if out:
                yield out
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    yield compressor.flush()
