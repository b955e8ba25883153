"""Pipeline workspaces on this worker: listing, deleting, cleaning, and static files.

The primary decides which worker is a pipeline's home (its cache). It learns which
workspaces exist from every poll, tells the agent which to delete, when to start one from
nothing (clean_workspace), and which static files it must hold. Everything here stays
inside HOME/workspaces/ and HOME/files/: names and paths from the primary are checked
before use, even though the primary checks them too.

The HTTP side (fetching a file's bytes) is a callable handed in, so this module only
touches the file system.
"""

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
from agent.home import FILES_DIR, TRASH_DIR, WORKSPACES_DIR, write_atomic
from agent.protocol import NAME_RE

log = logging.getLogger(__name__)

CLEANED_LINE = "workspace: cleaned (first run of this pipeline on this worker as its home)"
STATIC_FILE_MODE = 0o644  # like a checked-out file; the agent home itself is 0700


class PrepareFailed(Exception):
    """The workspace cannot be made ready; str(e) is the one line the user sees."""


def workspace_dir(home: Path, pipeline: str) -> Path:
    return home / WORKSPACES_DIR / pipeline


def record_path(home: Path, pipeline: str) -> Path:
    return home / FILES_DIR / f"{pipeline}.json"


def list_workspaces(home: Path) -> list[str]:
    """Names of the pipeline workspaces under HOME/workspaces/, as the poll reports them."""
    root = home / WORKSPACES_DIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if NAME_RE.match(p.name) and p.is_dir())


def delete_workspace(home: Path, name: str) -> bool:
    """Delete a pipeline's workspace and its static-file record; True if a workspace was
    there. The caller makes sure no run of the pipeline is using it."""
    if not NAME_RE.match(name):  # also refuses "", ".", ".." and anything with a "/"
        raise ValueError(f"bad workspace name {name!r}")
    path = workspace_dir(home, name)
    existed = path.is_dir() or path.is_symlink()
    if path.is_symlink():
        path.unlink()  # never follow a link out of HOME/workspaces/
    elif path.is_dir():
        _throw_away(home, path)
    record_path(home, name).unlink(missing_ok=True)
    return existed


def _throw_away(home: Path, path: Path) -> None:
    # A cache can be gigabytes: removing it on the poll thread could outlast the heartbeat
    # timeout. A rename into the trash is instant; the removal runs in the background.
    trash = home / TRASH_DIR
    trash.mkdir(exist_ok=True)
    target = trash / f"{path.name}.{uuid.uuid4().hex}"
    try:
        os.rename(path, target)
    except OSError:  # e.g. the workspace is on another file system: remove it in place
        shutil.rmtree(path)
        return
    _remove_in_background([target])


def empty_trash(home: Path) -> None:
    """Remove what an earlier agent process left in the trash (in the background)."""
    trash = home / TRASH_DIR
    _remove_in_background(sorted(trash.iterdir()) if trash.is_dir() else [])


def _remove_in_background(paths: list[Path]) -> None:
    def remove() -> None:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)

    if paths:
        threading.Thread(target=remove, name="empty-trash", daemon=True).start()


def delete_workspaces(home: Path, names: Any, busy: set[str]) -> None:
    """Act on a poll answer's delete_workspaces, skipping the pipelines in `busy` (a run of
    theirs is held). The primary repeats the list while a directory exists, so a skipped
    or failed deletion is simply tried again on a later poll."""
    if not isinstance(names, list):
        return
    for name in names:
        if not isinstance(name, str) or not NAME_RE.match(name):
            log.warning("ignoring a bad workspace name to delete: %r", name)
        elif name in busy:
            log.debug("workspace %s is in use; deleting it later", name)
        else:
            try:
                if delete_workspace(home, name):
                    log.info("deleted workspace %s: this worker is no longer its home", name)
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
    home: Path, run: Assignment, fetch: Callable[[str], bytes], lines: list[str]
) -> None:
    """Make the run's workspace ready for its first job, appending what was done to `lines`.

    Call with the workspace lock held. Raises PrepareFailed when the run cannot go on;
    whatever `fetch` raises (stale attempt, stop, cancel) passes through.
    """
    workspace = workspace_dir(home, run.pipeline)
    record = record_path(home, run.pipeline)
    workspace.mkdir(parents=True, exist_ok=True)
    if run.clean_workspace:
        clean_workspace(workspace, record)
        lines.append(CLEANED_LINE)
    sync_files(workspace, record, run.files, fetch, lines)


def sync_files(
    workspace: Path,
    record_file: Path,
    files: list[StaticFile],
    fetch: Callable[[str], bytes],
    lines: list[str],
) -> None:
    """Make the workspace hold exactly the listed static files (of those the agent manages)."""
    # Every path is checked before anything changes, so a bad one leaves the workspace as is.
    targets = {f.path: safe_path(workspace, f.path) for f in files}
    record = read_record(record_file)
    # Deletions first: a dropped file "a" may stand where a new "a/b" needs a directory.
    for rel in sorted(set(record) - set(targets)):
        try:
            safe_path(workspace, rel).unlink(missing_ok=True)
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
        if record.get(f.path) == f.sha256 and target.is_file():
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
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(target, data, STATIC_FILE_MODE)
        except OSError as e:
            raise PrepareFailed(f"static files: cannot write {f.path}: {e.strerror or e}") from None
        record[f.path] = f.sha256
        write_record(record_file, record)
        lines.append(f"static files: fetched {f.path} ({len(data)} bytes)")
    if not files:
        lines.append("static files: none")
