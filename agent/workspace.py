"""Pipeline workspaces on this worker: listing, deleting, cleaning, and static files.

The primary decides which worker is a pipeline's home (its cache). It learns which
workspaces exist from every poll, tells the agent which to delete, when to start one from
nothing (clean_workspace), and which static files it must hold. Everything here stays
inside the work dir (WORK/<pipeline>, by default HOME/workspaces/) and HOME/files/: names
and paths from the primary are checked before use, even though the primary checks them too.

A workspace belongs to the identity its jobs run as (agent.identity), and the agent, often
root, writes static files into it: every write goes folder by folder through file
descriptors opened with O_NOFOLLOW, so no link a job left there can send it elsewhere.

The HTTP side (fetching a file's bytes) is a callable handed in, so this module only
touches the file system.
"""

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from agent.assignment import Assignment, StaticFile
from agent.home import FILES_DIR, TRASH_DIR, git_dir, write_atomic
from agent.protocol import NAME_RE

log = logging.getLogger(__name__)

CLEANED_LINE = "workspace: cleaned (first run of this pipeline on this worker as its home)"
STATIC_FILE_MODE = 0o644  # like a checked-out file; the workspace itself is 0700
TRASH = ".trash"  # in the work dir (same file system); no pipeline name starts with "."
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# The owner (uid, gid) files the agent writes into a workspace get; None: the agent's.
Owner = tuple[int, int] | None


class PrepareFailed(Exception):
    """The workspace cannot be made ready; str(e) is the one line the user sees."""


def workspace_dir(work_dir: Path, pipeline: str) -> Path:
    return work_dir / pipeline


def record_path(home: Path, pipeline: str) -> Path:
    return home / FILES_DIR / f"{pipeline}.json"


def used_path(home: Path, pipeline: str) -> Path:
    """Its mtime is when a run of the pipeline was last taken here (workspace_cap.py)."""
    return home / FILES_DIR / f"{pipeline}.used"


def mark_used(home: Path, pipeline: str) -> None:
    path = used_path(home, pipeline)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.touch()  # an existing file gets the current time


def list_workspaces(work_dir: Path) -> list[str]:
    """Names of the pipeline workspaces in the work dir, as the poll reports them."""
    if not work_dir.is_dir():
        return []
    return sorted(p.name for p in work_dir.iterdir() if NAME_RE.match(p.name) and p.is_dir())


def delete_workspace(home: Path, work_dir: Path, name: str) -> bool:
    """Delete a pipeline's workspace, its clone (agent.git_checkout) and its static-file
    record; True if a workspace was there. The caller makes sure no run of the pipeline is
    using it."""
    if not NAME_RE.match(name):  # also refuses "", ".", ".." and anything with a "/"
        raise ValueError(f"bad workspace name {name!r}")
    path = workspace_dir(work_dir, name)
    existed = path.is_dir() or path.is_symlink()
    # The workspace goes last: once it is gone (what polls report), so is the rest.
    record_path(home, name).unlink(missing_ok=True)
    used_path(home, name).unlink(missing_ok=True)
    clone = git_dir(home, name)
    if clone.is_dir() and not clone.is_symlink():
        _throw_away(clone.parent, clone)
    if path.is_symlink():
        path.unlink()  # never follow a link out of the work dir
    elif path.is_dir():
        _throw_away(work_dir, path)
    return existed


def _throw_away(work_dir: Path, path: Path) -> None:
    # A cache can be gigabytes: removing it on the poll thread could outlast the heartbeat
    # timeout. A rename into the trash is instant; the removal runs in the background.
    trash = work_dir / TRASH
    trash.mkdir(mode=0o700, exist_ok=True)
    target = trash / f"{path.name}.{uuid.uuid4().hex}"
    try:
        os.rename(path, target)
    except OSError:  # e.g. the workspace is on another file system: remove it in place
        shutil.rmtree(path)
        return
    _remove_in_background([target])


def empty_trash(home: Path, work_dir: Path) -> None:
    """Remove what an earlier agent process left in the trashes of the work dir and the
    clones (in the background); also HOME/trash, where agents before the work dir kept it."""
    found: list[Path] = []
    for trash in (work_dir / TRASH, git_dir(home, "x").parent / TRASH, home / TRASH_DIR):
        found += sorted(trash.iterdir()) if trash.is_dir() else []
    _remove_in_background(found)


def _remove_in_background(paths: list[Path]) -> None:
    def remove() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    if paths:
        threading.Thread(target=remove, name="empty-trash", daemon=True).start()


def delete_workspaces(
    home: Path,
    work_dir: Path,
    names: Any,
    busy: set[str],
    deleted: Callable[[str], None] = lambda name: None,
) -> None:
    """Act on a poll answer's delete_workspaces, skipping the pipelines in `busy` (a run of
    theirs is held); `deleted(name)` after each one is gone (its job uid is freed). The
    primary repeats the list while a directory exists, so a skipped or failed deletion is
    simply tried again on a later poll."""
    if not isinstance(names, list):
        return
    for name in names:
        if not isinstance(name, str) or not NAME_RE.match(name):
            log.warning("ignoring a bad workspace name to delete: %r", name)
        elif name in busy:
            log.debug("workspace %s is in use; deleting it later", name)
        else:
            try:
                if delete_workspace(home, work_dir, name):
                    log.info("deleted workspace %s: this worker is no longer its home", name)
                deleted(name)
            except OSError as e:
                log.warning("cannot delete workspace %s: %s", name, e)


def clean_workspace(workspace: Path, record: Path) -> None:
    """Empty the workspace (keeping the directory) and forget the static files fetched."""
    # The record goes first: if emptying fails halfway, the next run fetches every file.
    record.unlink(missing_ok=True)
    for entry in workspace.iterdir() if workspace.is_dir() else []:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def safe_path(workspace: Path, rel: str) -> Path:
    """WORKSPACE/rel, or PrepareFailed if rel could reach outside the workspace."""
    parts = PurePosixPath(rel).parts
    if not rel or "\0" in rel or rel.startswith("/") or ".." in parts:
        raise PrepareFailed(f"static files: refusing the path {rel!r}: not inside the workspace")
    target = workspace / rel
    # resolve() follows symlinks a job may have left (conf -> /etc), so those are caught too.
    base = workspace.resolve()
    resolved = target.resolve()
    if resolved == base or not resolved.is_relative_to(base):
        raise PrepareFailed(f"static files: refusing the path {rel!r}: not inside the workspace")
    return target


def read_record(path: Path) -> dict[str, str]:
    """path → sha256 of the static files fetched into the workspace; {} if none or unreadable."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        # Forgetting the record only costs fetching the files again.
        log.warning("ignoring the unreadable static-file record %s: %s", path, e)
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def write_record(path: Path, record: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())


def prepare_workspace(
    home: Path,
    workspace: Path,
    run: Assignment,
    fetch: Callable[[str], bytes],
    lines: list[str],
    owner: Owner = None,
    checkout: Callable[[], None] | None = None,
) -> None:
    """Make the run's workspace (which exists) ready for its first job, appending what was
    done to `lines`; static files get `owner`. `checkout` (the git source) runs after the
    cleaning and before the static files, which may stand inside the clone.

    Call with the workspace lock held. Raises PrepareFailed when the run cannot go on;
    whatever `fetch` raises (stale attempt, stop, cancel) passes through.
    """
    record = record_path(home, run.pipeline)
    record.parent.mkdir(mode=0o700, exist_ok=True)
    if run.clean_workspace:
        clean_workspace(workspace, record)
        lines.append(CLEANED_LINE)
    if checkout is not None:
        checkout()
    sync_files(workspace, record, run.files, fetch, lines, owner)


def sync_files(
    workspace: Path,
    record_file: Path,
    files: list[StaticFile],
    fetch: Callable[[str], bytes],
    lines: list[str],
    owner: Owner = None,
) -> None:
    """Make the workspace hold exactly the listed static files (of those the agent manages)."""
    # Every path is checked before anything changes, so a bad one leaves the workspace as is.
    targets = {f.path: safe_path(workspace, f.path) for f in files}
    record = read_record(record_file)
    # Deletions first: a dropped file "a" may stand where a new "a/b" needs a directory.
    for rel in sorted(set(record) - set(targets)):
        try:
            safe_path(workspace, rel)
            _unlink_inside(workspace, rel)
        except PrepareFailed:
            log.warning("static-file record %s: ignoring the bad path %r", record_file, rel)
        except OSError as e:
            raise PrepareFailed(f"static files: cannot delete {rel}: {e.strerror or e}") from None
        else:
            lines.append(f"static files: deleted {rel}")
        del record[rel]
        write_record(record_file, record)
    for f in files:
        target = targets[f.path]
        if record.get(f.path) == f.sha256 and target.is_file() and not target.is_symlink():
            lines.append(f"static files: unchanged {f.path}")
            continue
        data = fetch(f.path)
        digest = hashlib.sha256(data).hexdigest()
        if digest != f.sha256:
            raise PrepareFailed(
                f"static files: {f.path}: the bytes fetched do not match the pipeline's sha256 "
                f"(expected {f.sha256}, got {digest})"
            )
        # Forget the old copy before touching it, so a crash in between never leaves a
        # record that vouches for bytes the file no longer has.
        if record.pop(f.path, None) is not None:
            write_record(record_file, record)
        try:
            write_inside(workspace, f.path, data, owner)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise PrepareFailed(
                    f"static files: cannot write {f.path}: a link or a file stands where a"
                    " folder of its path should be"
                ) from None
            raise PrepareFailed(f"static files: cannot write {f.path}: {e.strerror or e}") from None
        record[f.path] = f.sha256
        write_record(record_file, record)
        lines.append(f"static files: fetched {f.path} ({len(data)} bytes)")
    if not files:
        lines.append("static files: none")


def _open_folder(workspace: Path, parts: list[str], owner: Owner, create: bool) -> int:
    """A descriptor of WORKSPACE/parts..., opened one folder at a time without following a
    link (ENOTDIR or ELOOP if one stands in the way, or a file); missing folders are made,
    owned by `owner`."""
    fd = os.open(workspace, _DIR_FLAGS)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if owner is not None:
                    os.fchown(child, *owner)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def write_inside(
    workspace: Path, rel: str, data: bytes, owner: Owner, mode: int = STATIC_FILE_MODE
) -> None:
    """Write WORKSPACE/rel atomically (readers see the old bytes or all of the new), through
    descriptors that follow no link, owned by `owner`."""
    *folders, name = rel.split("/")
    folder = _open_folder(workspace, folders, owner, create=True)
    tmp = f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=folder,
        )
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        # A rename replaces a link of that name; it never writes through it.
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(folder)


def _unlink_inside(workspace: Path, rel: str) -> None:
    """Delete WORKSPACE/rel (not what a link there points to); gone already is fine."""
    *folders, name = rel.split("/")
    try:
        folder = _open_folder(workspace, folders, None, create=False)
    except FileNotFoundError:
        return
    try:
        os.unlink(name, dir_fd=folder)
    except FileNotFoundError:
        pass
    finally:
        os.close(folder)
