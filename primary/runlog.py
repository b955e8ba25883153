"""The run log for people: a Prepare environment section, then a header, the output and a
footer per job, composed on the fly from the job logs.

Jobs of a run execute one after another on one worker and each header appears when its job
starts, so the composed log only ever grows: an offset into it stays valid while it runs.
"""

import json
from collections.abc import Iterator

from primary.context import Primary
from primary.runs import FINAL_STATES, _run_row, job_rows


def _segments(primary: Primary, run: dict, jobs: list[dict]) -> list[bytes | tuple[str, int]]:
    """The log as a list of literal byte strings and (job name, size) file references."""
    parts: list[bytes | tuple[str, int]] = []
    if run["placement"] and run["attempt"]:
        lines = json.loads(run["placement"])
        if run["prepare_notes"]:
            lines += [
                f"on {run['worker_name']}: {note}" for note in json.loads(run["prepare_notes"])
            ]
        parts.append(
            f"=== Prepare environment (attempt {run['attempt']})\n".encode()
            + "".join(f"    {line}\n" for line in lines).encode()
        )
    for job in jobs:
        name, state = job["name"], job["state"]
        if state == "pending":
            continue
        if state == "skipped" and job["started_at"] is None:
            parts.append(f"=== job {name}: skipped\n".encode())
            continue
        parts.append(f"=== job {name}\n".encode())
        size = primary.logs.size(run["id"], run["attempt"], name)
        if size:
            parts.append((name, size))
        if state == "running":
            break  # later jobs have not started; stop so the log stays append-only
        newline = (
            b""
            if size == 0 or primary.logs.last_byte(run["id"], run["attempt"], name) == b"\n"
            else b"\n"
        )
        exit_code = "" if job["exit_code"] is None else f", exit code {job['exit_code']}"
        parts.append(newline + f"=== job {name}: {state}{exit_code}\n".encode())
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
            length = len(part) if isinstance(part, bytes) else part[1]
            if position + length <= offset:
                position += length
                continue
            skip = max(offset - position, 0)
            if isinstance(part, bytes):
                yield part[skip:]
            else:
                yield from primary.logs.iter_bytes(
                    run["id"], run["attempt"], part[0], skip, part[1]
                )
            position += length

    return generate(), complete
