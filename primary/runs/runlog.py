"""The run log for people: a Prepare environment section, then a header, the output and a
footer per job, composed on the fly from the job logs.

Jobs of a run execute one after another on one worker and each header appears when its job
starts, so the composed log only ever grows: an offset into it stays valid while it runs.
An attempt that was lost or taken back stays in the log as it was, with its partial output
and a line saying how it ended; the next attempt follows it.
"""

import json
import signal
from collections.abc import Iterator

from primary.context import Primary
from primary.runs.runs import FINAL_STATES, _run_row, job_rows, trigger_text

# A piece of the log: literal bytes, or (attempt, job, size): that many bytes of a job log.
Part = bytes | tuple[int, str, int]


def signal_name(number: int) -> str:
    """SIGTERM for 15; `signal 99` for a number no signal has. Pure."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def exit_text(code: int | None) -> str:
    """A job footer's end: ', exit code 3', ', killed by SIGTERM' (a negative code is the
    signal that ended it), or '' when there is none. Pure."""
    if code is None:
        return ""
    return f", killed by {signal_name(-code)}" if code < 0 else f", exit code {code}"


def prepare_lines(
    placement: list[str], worker_name: str | None, prepare_notes: str | None
) -> list[str]:
    """An attempt's Prepare environment lines: where it went and why (`placement`), then
    what its worker did before the first job (`prepare_notes`, JSON as stored)."""
    notes = json.loads(prepare_notes) if prepare_notes else []
    return placement + [f"on {worker_name}: {note}" for note in notes]


def origin_lines(run: dict) -> list[str]:
    """What a run builds and what started it: fixed when it is created, so the log that
    shows them stays append-only (the commit's subject and author come in the notes)."""
    lines = []
    if run["triggered_by"]:
        lines.append(f"triggered by: {trigger_text(json.loads(run['triggered_by']))}")
    if run["source"]:
        source = json.loads(run["source"])
        lines.append(f"source: {source['git']} {source['ref']} at {source['sha']}")
    if run["parameters"]:
        values = json.loads(run["parameters"])
        lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(values.items())))
    return lines


def _attempt_parts(
    primary: Primary,
    run_id: int,
    attempt: int,
    worker_name: str | None,
    placement: str | None,
    prepare_notes: str | None,
    jobs: list[dict],
    origin: list[str],
) -> list[Part]:
    """One attempt: its Prepare environment section, then a header, the output and a footer
    per job that started. `jobs`: {name, state, exit_code, started} in execution order."""
    parts: list[Part] = []
    if placement and attempt:
        lines = origin + prepare_lines(json.loads(placement), worker_name, prepare_notes)
        parts.append(
            f"=== Prepare environment (attempt {attempt})\n".encode()
            + "".join(f"    {line}\n" for line in lines).encode()
        )
    for job in jobs:
        name, state = job["name"], job["state"]
        if state == "pending":
            continue
        if state == "skipped" and not job["started"]:
            parts.append(f"=== job {name}: skipped\n".encode())
            continue
        parts.append(f"=== job {name}\n".encode())
        size = primary.logs.size(run_id, attempt, name)
        if size:
            parts.append((attempt, name, size))
        if state == "running":
            break  # later jobs have not started; stop so the log stays append-only
        exit_code = exit_text(job["exit_code"])
        parts.append(
            _newline_after(primary, run_id, parts)
            + f"=== job {name}: {state}{exit_code}\n".encode()
        )
    return parts


def _newline_after(primary: Primary, run_id: int, parts: list[Part]) -> bytes:
    """A newline when the parts end with job output that does not end with one."""
    last = parts[-1] if parts else b""
    if isinstance(last, tuple) and primary.logs.last_byte(run_id, last[0], last[1]) != b"\n":
        return b"\n"
    return b""


def _ended_attempt_parts(
    primary: Primary, run_id: int, attempt: dict, origin: list[str]
) -> list[Part]:
    """An attempt that was lost or taken back, as the log showed it while it lasted (kept in
    its attempts row), then a line saying how it ended. Its output is partial, and final:
    the primary refuses every later write from it."""
    parts: list[Part] = []
    if attempt["jobs"] is not None:  # kept since schema 6
        parts = _attempt_parts(
            primary,
            run_id,
            attempt["attempt"],
            attempt["worker_name"],
            attempt["placement"],
            attempt["prepare_notes"],
            json.loads(attempt["jobs"]),
            origin,
        )
    outcome = attempt["outcome"]
    reason = (attempt["reason"] or "").removeprefix(f"{outcome}: ")
    reason = f" ({reason})" if reason else ""
    line = f"=== attempt {attempt['attempt']} on {attempt['worker_name']}: {outcome}{reason}\n"
    parts.append(_newline_after(primary, run_id, parts) + line.encode())
    return parts


def _segments(primary: Primary, run: dict, jobs: list[dict]) -> list[Part]:
    """The log: every attempt that was lost or taken back, then the current one, then how
    the run ended. Earlier attempts stay, so the log only grows across attempts too."""
    ended = [
        dict(a)
        for a in primary.store.query(
            "SELECT * FROM attempts WHERE run_id = ? AND outcome IN ('lost', 'taken back')"
            " AND (jobs IS NOT NULL OR attempt < ?) ORDER BY attempt",
            (run["id"], run["attempt"]),
        )
    ]
    parts: list[Part] = []
    origin = origin_lines(run)
    for attempt in ended:
        parts += _ended_attempt_parts(primary, run["id"], attempt, origin)
    if run["attempt"] not in {a["attempt"] for a in ended}:
        current = [
            {
                "name": j["name"],
                "state": j["state"],
                "exit_code": j["exit_code"],
                "started": j["started_at"] is not None,
            }
            for j in jobs
        ]
        parts += _attempt_parts(
            primary,
            run["id"],
            run["attempt"],
            run["worker_name"],
            run["placement"],
            run["prepare_notes"],
            current,
            origin,
        )
    if run["state"] in FINAL_STATES:
        reason = f" ({run['reason']})" if run["reason"] else ""
        parts.append(f"=== run {run['id']}: {run['state']}{reason}\n".encode())
    return parts


def run_log(primary: Primary, run_id: int, offset: int) -> tuple[Iterator[bytes], bool]:
    """Bytes of the run log from `offset`, and whether the log is complete."""
    run = _run_row(primary, run_id)
    parts = _segments(primary, run, job_rows(primary, run_id))
    complete = run["state"] in FINAL_STATES

    def generate() -> Iterator[bytes]:
        position = 0
        for part in parts:
            length = len(part) if isinstance(part, bytes) else part[2]
            if position + length <= offset:
                position += length
                continue
            skip = max(offset - position, 0)
            if isinstance(part, bytes):
                yield part[skip:]
            else:
                attempt, job, size = part
                yield from primary.logs.iter_bytes(run["id"], attempt, job, skip, size)
            position += length

    return generate(), complete
