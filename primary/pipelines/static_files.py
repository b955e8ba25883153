"""Static files admins upload for a pipeline; agents fetch them into the workspace.

Size and sha256 are in the store (`pipeline_files`). The bytes: with SQLite, under
DATA/files/<pipeline>/<path>; in a shared fleet (PostgreSQL), in the store too, so every
primary serves them: chunks of COPY_CHUNK bytes in `file_chunks`, under a `blob` id of
their own. An upload writes its chunks first, one short transaction each (a slow uploader
holds no transaction open), then makes them the file's in one transaction that drops the
old ones; an upload that fails leaves nothing behind. Paths are normalised; absolute
paths, `..` and anything that would resolve outside the pipeline's folder (a link planted
there, say) are refused.
"""

import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from primary.context import Primary
from primary.errors import BadRequest, NotFound
from primary.pipelines.pipelines import get_spec
from primary.store import blobs
from primary.timestamps import iso

MAX_PATH = 1024
MAX_SEGMENT = 255
COPY_CHUNK = 1 << 20


def normalise_path(raw: str) -> str:
    """`a//b/./c.txt` → `a/b/c.txt`; refuses what could leave the tree. Pure."""
    if not raw or len(raw) > MAX_PATH:
        raise BadRequest(f"path: must be 1-{MAX_PATH} characters")
    if raw.startswith("/") or raw.startswith("\\"):
        raise BadRequest("path: must be relative, not absolute")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in raw) or "\\" in raw:
        raise BadRequest("path: must not contain control characters or backslashes")
    segments = [s for s in raw.split("/") if s not in ("", ".")]
    if not segments:
        raise BadRequest("path: names no file")
    for segment in segments:
        if segment == "..":
            raise BadRequest("path: must not contain '..'")
        if len(segment) > MAX_SEGMENT:
            raise BadRequest(f"path: each part must be at most {MAX_SEGMENT} characters")
    return "/".join(segments)


def folder(primary: Primary, pipeline: str) -> Path:
    return primary.data.root / "files" / pipeline


def _inside(primary: Primary, pipeline: str, path: str) -> Path:
    root = folder(primary, pipeline)
    target = root / path
    # A link inside the tree must not lead out of it.
    if not os.path.realpath(target).startswith(os.path.realpath(root) + os.sep):
        raise BadRequest("path: leads out of the pipeline's files")
    return target


def _in_store(primary: Primary) -> bool:
    return primary.data.shared_store()


def _check_tree(primary: Primary, pipeline: str, path: str) -> None:
    """A file may not be a folder of other files, nor below another file (as on disk)."""
    parents = _parents(path)
    marks = ",".join("?" * len(parents)) or "NULL"
    rows = primary.store.query(
        "SELECT path FROM pipeline_files WHERE pipeline = ? AND (substr(path, 1, ?) = ?"
        f" OR path IN ({marks})) LIMIT 1",
        (pipeline, len(path) + 1, path + "/", *parents),
    )
    for row in rows:
        if row["path"].startswith(path + "/"):
            raise BadRequest(f"path: {path} is a folder of other files")
        raise BadRequest(f"path: {row['path']} is a file, so nothing can be below it")


def _parents(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _put_in_store(primary: Primary, pipeline: str, path: str, stream: BinaryIO) -> dict:
    _check_tree(primary, pipeline, path)
    blob, sha256, size = blobs.write(primary.store, stream)
    try:
        with primary.store.transaction() as conn:
            old = conn.execute(
                "SELECT blob FROM pipeline_files WHERE pipeline = ? AND path = ? FOR UPDATE",
                (pipeline, path),
            ).fetchone()
            conn.execute(
                "INSERT INTO pipeline_files (pipeline, path, sha256, size, updated_at, blob)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline, path) DO UPDATE SET"
                " sha256 = excluded.sha256, size = excluded.size,"
                " updated_at = excluded.updated_at, blob = excluded.blob",
                (pipeline, path, sha256, size, time.time(), blob),
            )
            if old is not None and old["blob"]:
                conn.execute("DELETE FROM file_chunks WHERE blob = ?", (old["blob"],))
    except BaseException:
        blobs.drop(primary.store, blob)
        raise
    return file_info(primary, pipeline, path)


def put_file(primary: Primary, pipeline: str, raw_path: str, stream: BinaryIO) -> dict:
    get_spec(primary, pipeline)  # 404 for an unknown pipeline
    path = normalise_path(raw_path)
    if _in_store(primary):
        return _put_in_store(primary, pipeline, path, stream)
    root = folder(primary, pipeline)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = _inside(primary, pipeline, path)
    if target.is_dir():
        raise BadRequest(f"path: {path} is a folder of other files")
    parts = path.split("/")
    for i in range(1, len(parts)):
        above = root.joinpath(*parts[:i])
        if above.exists() and not above.is_dir():
            raise BadRequest(f"path: {'/'.join(parts[:i])} is a file, so nothing can be below it")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _inside(primary, pipeline, path)  # again, now that the parents exist
    digest, size = hashlib.sha256(), 0
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            while chunk := stream.read(COPY_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                f.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with primary.store.transaction() as conn:
        conn.execute(
            "INSERT INTO pipeline_files (pipeline, path, sha256, size, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (pipeline, path) DO UPDATE SET"
            " sha256 = excluded.sha256, size = excluded.size, updated_at = excluded.updated_at",
            (pipeline, path, digest.hexdigest(), size, time.time()),
        )
    return file_info(primary, pipeline, path)


def file_info(primary: Primary, pipeline: str, path: str) -> dict:
    row = primary.store.query_one(
        "SELECT * FROM pipeline_files WHERE pipeline = ? AND path = ?", (pipeline, path)
    )
    if row is None:
        raise NotFound(f"pipeline {pipeline!r} has no file {path!r}")
    return {
        "path": row["path"],
        "size": row["size"],
        "sha256": row["sha256"],
        "updated_at": iso(row["updated_at"]),
    }


def list_files(primary: Primary, pipeline: str) -> list[dict]:
    get_spec(primary, pipeline)
    rows = primary.store.query(
        "SELECT path FROM pipeline_files WHERE pipeline = ? ORDER BY path", (pipeline,)
    )
    return [file_info(primary, pipeline, r["path"]) for r in rows]


def manifest(primary: Primary, pipeline: str) -> list[dict]:
    """What an agent needs to sync the workspace: path, sha256 and size of every file."""
    rows = primary.store.query(
        "SELECT path, sha256, size FROM pipeline_files WHERE pipeline = ? ORDER BY path",
        (pipeline,),
    )
    return [dict(r) for r in rows]


def read_file(primary: Primary, pipeline: str, raw_path: str) -> tuple[dict, Iterator[bytes]]:
    path = normalise_path(raw_path)
    info = file_info(primary, pipeline, path)
    if _in_store(primary):
        row = primary.store.query_one(
            "SELECT blob FROM pipeline_files WHERE pipeline = ? AND path = ?", (pipeline, path)
        )
        return info, blobs.read(primary.store, row["blob"] if row else "")
    target = _inside(primary, pipeline, path)

    def chunks() -> Iterator[bytes]:
        with open(target, "rb") as f:
            while chunk := f.read(COPY_CHUNK):
                yield chunk

    return info, chunks()


def delete_file(primary: Primary, pipeline: str, raw_path: str) -> None:
    path = normalise_path(raw_path)
    file_info(primary, pipeline, path)
    if _in_store(primary):
        with primary.store.transaction() as conn:
            row = conn.execute(
                "SELECT blob FROM pipeline_files WHERE pipeline = ? AND path = ? FOR UPDATE",
                (pipeline, path),
            ).fetchone()
            conn.execute(
                "DELETE FROM pipeline_files WHERE pipeline = ? AND path = ?", (pipeline, path)
            )
            if row is not None and row["blob"]:
                conn.execute("DELETE FROM file_chunks WHERE blob = ?", (row["blob"],))
        return
    target = _inside(primary, pipeline, path)
    with primary.store.transaction() as conn:
        conn.execute("DELETE FROM pipeline_files WHERE pipeline = ? AND path = ?", (pipeline, path))
    target.unlink(missing_ok=True)
