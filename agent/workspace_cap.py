"""A cap on the disk the pipelines' workspaces take on this worker (`cifleet-agent run
--workspace-max-bytes`): past it, the least recently used workspaces are deleted first,
until the rest fit. A workspace a held run uses is never deleted.

Checked after each run ends. What a workspace takes is what `du` counts (allocated blocks,
no link followed, hard links once per workspace). Its last use is when a run of its
pipeline was last taken here (HOME/files/PIPELINE.used), or the folder's own mtime for a
workspace older than that record. The agent tells the primary which it deleted
(`evicted_workspaces` in its polls), so their pipelines' homes are forgotten and the next
run is not placed here expecting a cache.
"""

import logging
import os
import re
from pathlib import Path

from agent.workspace import delete_workspace, list_workspaces, used_path, workspace_dir

log = logging.getLogger(__name__)

SIZE_RE = re.compile(r"^([0-9]{1,15})([KMGT]?)$")
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes from "500M", "20G" or a plain number (binary units); ValueError otherwise."""
    match = SIZE_RE.match(text.strip().upper())
    if match is None or int(match[1]) == 0:
        raise ValueError(f"{text!r} is not a size such as 500M, 20G or 1T")
    return int(match[1]) * UNITS[match[2]]


def disk_use(path: Path) -> int:
    """Bytes allocated under `path`, as `du -s` counts them; what cannot be read counts 0."""
    total, seen = 0, set()
    stack = [str(path)]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if info.st_nlink > 1:
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
            total += info.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
    return total


def last_used(home: Path, work_dir: Path, pipeline: str) -> float:
    for path in (used_path(home, pipeline), workspace_dir(work_dir, pipeline)):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def evict(home: Path, work_dir: Path, cap: int, busy: set[str]) -> list[str]:
    """Delete the least recently used workspaces not in `busy` until the rest take at most
    `cap` bytes; return the names deleted, oldest first."""
    sizes = {name: disk_use(workspace_dir(work_dir, name)) for name in list_workspaces(work_dir)}
    total = sum(sizes.values())
    if total <= cap:
        return []
    evicted = []
    for name in sorted(sizes, key=lambda n: (last_used(home, work_dir, n), n)):
        if total <= cap:
            break
        if name in busy:
            continue
        try:
            delete_workspace(home, work_dir, name)
        except OSError as e:
            log.warning("cannot delete workspace %s to stay under the cap: %s", name, e)
            continue
        total -= sizes[name]
        evicted.append(name)
        log.info(
            "deleted workspace %s (%d bytes, the least recently used): the workspaces took"
            " more than the cap of %d bytes",
            name,
            sizes[name],
            cap,
        )
    if total > cap:
        log.warning(
            "the workspaces in use still take %d bytes, more than the cap of %d", total, cap
        )
    return evicted
