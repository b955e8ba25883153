"""Which files of a commit must be written into the workspace, and which removed, so that
its tracked files are exactly the commit's whatever a job did since the last checkout.

After every checkout the agent records, in its own clone (where no job reaches), each
tracked file's object id, inode and change time (ctime). The kernel sets ctime on every
change to an inode (content, mode, links, owner) and no one but the clock can set it back,
so a file whose inode and ctime are the recorded ones is the one the agent wrote, unchanged.
Only the others are written again: a changed commit costs what it changed, and unchanged
files keep their modification times (make stays incremental). With no record (a first
checkout, an upgraded agent, a record that cannot be read), everything is written.
"""

import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from agent.home import write_atomic

log = logging.getLogger(__name__)

TREE, LINK, SUBMODULE = "040000", "120000", "160000"
# (mode, object id, path) of one entry of `git ls-tree -r -t`.
Entry = tuple[str, str, str]
Record = dict[str, list]  # path -> [object id, inode, ctime_ns]


@dataclass
class Plan:
    remove: list[str] = field(default_factory=list)  # removed first (rm -rf)
    write: list[str] = field(default_factory=list)  # files and links to write
    everything: bool = False  # every file and link of the commit (no record to trust)
    # Files and links found as the agent wrote them: their record entries stay as they are.
    unchanged: Record = field(default_factory=dict)


def plan(workspace: Path, entries: list[Entry], record: Record | None) -> Plan:
    """What to remove and write for the workspace to hold `entries` exactly."""
    files = [e for e in entries if e[0] not in (TREE, SUBMODULE)]
    result = Plan()
    if record is None:
        result.everything = True
        result.write = [path for _, _, path in files]
    renewed: list[str] = []  # folders removed: everything below them is written
    root = str(workspace)  # plain strings: a Path per file costs more than its lstat
    for mode, oid, path in sorted(entries, key=lambda e: e[2]):
        if mode == SUBMODULE:
            continue
        if any(path.startswith(folder + "/") for folder in renewed):
            if mode != TREE and not result.everything:
                result.write.append(path)
            continue
        try:
            st = os.lstat(os.path.join(root, path))
        except OSError:  # missing, or below something that is not a folder
            st = None
        if mode == TREE:
            if st is not None and not stat.S_ISDIR(st.st_mode):
                result.remove.append(path)  # a file or a link where a folder goes
                renewed.append(path)
            continue
        if st is not None and stat.S_ISDIR(st.st_mode):
            result.remove.append(path)  # a folder where a file goes
        if result.everything:
            continue
        kept = record.get(path)
        if st is None or not _is_written(st, mode, oid, kept):
            result.write.append(path)
        else:
            result.unchanged[path] = kept
    return result


def _is_written(st: os.stat_result, mode: str, oid: str, kept: list | None) -> bool:
    """Whether the file is what the agent wrote for object `oid`, untouched since."""
    if kept is None or kept[0] != oid or kept[1:] != [st.st_ino, st.st_ctime_ns]:
        return False
    return stat.S_ISLNK(st.st_mode) if mode == LINK else stat.S_ISREG(st.st_mode)


def record_of(workspace: Path, entries: list[Entry], unchanged: Record | None = None) -> Record:
    """The record of the files just written (those that are not there are left out, so
    they are written next time). `unchanged`: entries `plan` found as written, and nothing
    has touched since (no job runs during a checkout), kept without another lstat."""
    unchanged = unchanged or {}
    record: Record = {}
    root = str(workspace)
    for mode, oid, path in entries:
        if mode in (TREE, SUBMODULE):
            continue
        if path in unchanged:
            record[path] = unchanged[path]
            continue
        try:
            st = os.lstat(os.path.join(root, path))
        except OSError:
            continue
        record[path] = [oid, st.st_ino, st.st_ctime_ns]
    return record


def read_record(path: Path) -> Record | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring the unreadable checkout record %s: %s", path, e)
        return None
    return data if isinstance(data, dict) else None


def write_record(path: Path, record: Record) -> None:
    write_atomic(path, json.dumps(record, separators=(",", ":")).encode())  # ASCII: \u escapes
