"""A job's artifacts: one tar per job and attempt, sent by its agent before the job's final
status, kept where static files are kept (DATA/artifacts on SQLite, the store's file chunks
in a shared fleet), listed and downloaded through the admin API, pruned with their run.

The agent reads the files as the job's own uid, but the tar is the job's work all the same,
so it is checked here before it is kept: at most `max_artifact_bytes`, a POSIX ustar
(read by tar_check.py, not tarfile) whose every member is a regular file under a relative
path with no `..` (no links, devices or absolute names), at most MAX_MEMBERS of them."""

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from primary.context import Primary
from primary.errors import ApiError, BadRequest, NotFound
from primary.pipelines.static_files import normalise_path
from primary.runs import tar_check
from primary.runs.dispatch import current_run
from primary.store import blobs
from primary.timestamps import iso

MAX_MEMBERS = 10_000
COPY = 1 << 20


def _file(primary: Primary, run_id: int, attempt: int, job: str, sha256: str) -> Path:
    """Where SQLite's primary keeps a tar: named by its content too, so a repeated upload is
    written beside the one its row still describes, never over it."""
    return primary.data.root / "artifacts" / str(run_id) / f"{attempt}-{job}-{sha256}.tar"


def store(
    primary: Primary,
    worker: dict,
    run_id: int,
    job: str,
    attempt: int,
    length: int,
    read: Callable[[int], bytes],
) -> dict:
    """Keep the tar of `length` bytes read from the request body (a repeat replaces it)."""
    current_run(primary, worker, run_id, attempt)
    if (
        primary.store.query_one("SELECT 1 FROM jobs WHERE run_id = ? AND name = ?", (run_id, job))
        is None
    ):
        raise NotFound(f"run {run_id} has no job {job!r}")
    if length > primary.config.max_artifact_bytes:
        err = ApiError(f"artifacts must be at most {primary.config.max_artifact_bytes} bytes")
        err.status, err.code = 413, "too_large"
        raise err
    spool = primary.data.root / "artifacts"
    spool.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=spool, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            left = length
            while left > 0 and (data := read(min(COPY, left))):
                f.write(data)
                left -= len(data)
        if left:
            raise BadRequest("the body ended before its Content-Length")
        files = _members(Path(tmp))
        target = None
        if primary.data.shared_store():
            with open(tmp, "rb") as f:
                blob, sha256, size = blobs.write(primary.store, f)
        else:
            blob, sha256, size = None, _sha256(Path(tmp)), length
            target = _file(primary, run_id, attempt, job, sha256)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(tmp, target)
        old = None
        try:
            with primary.store.transaction() as conn:
                # One upload of the run at a time: two of the same job would each see no
                # old blob and the first one's chunks would be left behind.
                conn.execute("SELECT id FROM runs WHERE id = ? FOR UPDATE", (run_id,))
                old = conn.execute(
                    "SELECT blob, sha256 FROM artifacts"
                    " WHERE run_id = ? AND attempt = ? AND job = ?",
                    (run_id, attempt, job),
                ).fetchone()
                conn.execute(
                    "INSERT INTO artifacts (run_id, attempt, job, size, sha256, files, blob,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                    " (run_id, attempt, job) DO UPDATE SET size = excluded.size,"
                    " sha256 = excluded.sha256, files = excluded.files, blob = excluded.blob,"
                    " created_at = excluded.created_at",
                    (run_id, attempt, job, size, sha256, json.dumps(files), blob, time.time()),
                )
                if old is not None and old["blob"]:
                    conn.execute("DELETE FROM file_chunks WHERE blob = ?", (old["blob"],))
        except BaseException:
            if blob is not None:
                blobs.drop(primary.store, blob)
            if target is not None and (old is None or old["sha256"] != sha256):
                target.unlink(missing_ok=True)  # the row still describes the old file
            raise
        if target is not None and old is not None and old["sha256"] != sha256:
            _file(primary, run_id, attempt, job, old["sha256"]).unlink(missing_ok=True)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return {"size": size, "sha256": sha256, "files": len(files)}


def _members(tar_path: Path) -> list[dict]:
    """The tar's files as [{"path", "size"}]; 400 for anything but a ustar of regular files
    under safe relative paths (primary/runs/tar_check.py)."""
    files = []
    try:
        with open(tar_path, "rb") as f:
            found = tar_check.members(f, tar_path.stat().st_size, MAX_MEMBERS)
    except tar_check.BadTar as e:
        raise BadRequest(f"artifacts: not a tar of files: {e}") from None
    for name, size, offset in found:
        try:
            path = normalise_path(name)
        except BadRequest as e:
            raise BadRequest(f"artifacts: {name!r}: {e.message}") from None
        files.append({"path": path, "size": size, "offset": offset})
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY):
            digest.update(chunk)
    return digest.hexdigest()


def list_for_run(primary: Primary, run_id: int) -> list[dict]:
    rows = primary.store.query(
        "SELECT run_id, attempt, job, size, sha256, files, created_at FROM artifacts"
        " WHERE run_id = ? ORDER BY attempt, job",
        (run_id,),
    )
    return [
        {
            "job": r["job"],
            "attempt": r["attempt"],
            "size": r["size"],
            "sha256": r["sha256"],
            # Where each file's bytes are in the tar is the primary's business.
            "files": [{"path": f["path"], "size": f["size"]} for f in json.loads(r["files"])],
            "created_at": iso(r["created_at"]),
        }
        for r in rows
    ]


def read(
    primary: Primary, run_id: int, job: str, attempt: int | None = None
) -> tuple[dict, Iterator[bytes]]:
    """The tar of the job's artifacts (its latest attempt's unless `attempt`) and its bytes."""
    row = _row(primary, run_id, job, attempt)
    info = {"run_id": run_id, "job": job, "attempt": row["attempt"], "size": row["size"]}
    info["sha256"] = row["sha256"]
    return info, _bytes(primary, row, 0, row["size"])


def read_file(
    primary: Primary, run_id: int, job: str, raw_path: str, attempt: int | None = None
) -> tuple[dict, Iterator[bytes]]:
    """One file of the job's artifacts (its latest attempt's unless `attempt`), by its path
    in the listing, and its bytes."""
    row = _row(primary, run_id, job, attempt)
    path = normalise_path(raw_path)
    found = next((f for f in json.loads(row["files"]) if f["path"] == path), None)
    if found is None or "offset" not in found:  # or kept before offsets were recorded
        raise NotFound(f"run {run_id} has no artifact {path!r} of job {job!r}")
    info = {"attempt": row["attempt"], "path": path, "size": found["size"]}
    return info, _bytes(primary, row, found["offset"], found["size"])


def _row(primary: Primary, run_id: int, job: str, attempt: int | None) -> dict:
    row = primary.store.query_one(
        "SELECT * FROM artifacts WHERE run_id = ? AND job = ?"
        + (" AND attempt = ?" if attempt is not None else "")
        + " ORDER BY attempt DESC LIMIT 1",
        (run_id, job, *(() if attempt is None else (attempt,))),
    )
    if row is None:
        raise NotFound(f"run {run_id} has no artifacts of job {job!r}")
    return row


def _bytes(primary: Primary, row: dict, offset: int, length: int) -> Iterator[bytes]:
    """`length` bytes of the row's tar from `offset`, in pieces."""
    if row["blob"]:
        return blobs.read_range(primary.store, row["blob"], offset, length)
    path = _file(primary, row["run_id"], row["attempt"], row["job"], row["sha256"])
    if not path.exists():  # kept before files were named by their content
        path = path.with_name(f"{row['attempt']}-{row['job']}.tar")

    def chunks() -> Iterator[bytes]:
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left > 0 and (chunk := f.read(min(COPY, left))):
                left -= len(chunk)
                yield chunk

    return chunks()


def delete_for_runs(conn, run_ids: tuple[int, ...]) -> int:
    """Inside the janitor's transaction: drop the runs' artifacts rows and chunks; the bytes
    they held. Their files on disk (SQLite) go after the commit (`remove_files`)."""
    marks = ",".join("?" * len(run_ids))
    rows = conn.execute(
        f"SELECT blob, size FROM artifacts WHERE run_id IN ({marks})", run_ids
    ).fetchall()
    for row in rows:
        if row["blob"]:
            conn.execute("DELETE FROM file_chunks WHERE blob = ?", (row["blob"],))
    conn.execute(f"DELETE FROM artifacts WHERE run_id IN ({marks})", run_ids)
    return sum(r["size"] for r in rows)


def remove_files(data_root: Path, run_ids: tuple[int, ...]) -> None:
    for run_id in run_ids:
        shutil.rmtree(data_root / "artifacts" / str(run_id), ignore_errors=True)
