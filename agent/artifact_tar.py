"""A job's artifacts as a tar stream: the files its globs name inside the workspace, as
regular files under their path there. Run by agent/artifacts.py in a child that has become
the job's own uid, so it reads only what the job itself could read. Links are never followed
or stored.
"""

import glob
import os
import stat
import tarfile


def matches(workspace: str, patterns: list[str]) -> list[str]:
    """The regular files the patterns name, relative, sorted; a folder stands for every
    file below it. Nothing outside the workspace, and no link is followed."""
    found: set[str] = set()
    for pattern in patterns:
        for rel in glob.glob(pattern, root_dir=workspace, recursive=True):
            rel = os.path.normpath(rel)
            if rel.startswith("..") or os.path.isabs(rel):
                continue
            _add(workspace, rel, found)
    return sorted(found)


def _add(workspace: str, rel: str, found: set[str]) -> None:
    try:
        mode = os.lstat(os.path.join(workspace, rel)).st_mode
    except OSError:
        return
    if stat.S_ISREG(mode):
        found.add(rel)
    elif stat.S_ISDIR(mode):
        for top, _dirs, files in os.walk(os.path.join(workspace, rel)):  # links not followed
            for name in files:
                path = os.path.join(top, name)
                if stat.S_ISREG(os.lstat(path).st_mode):
                    found.add(os.path.relpath(path, workspace))


def write_tar(workspace: str, files: list[str], out) -> None:
    """POSIX ustar, the only format the primary reads (primary/runs/tar_check.py): a file
    whose name does not fit it (over 255 bytes) is left out."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for rel in files:
            path = os.path.join(workspace, rel)
            try:
                # O_NOFOLLOW: a file swapped for a link since it was listed is skipped;
                # O_NONBLOCK: one swapped for a FIFO cannot hold the open up.
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # gone, unreadable, or swapped for a link since it was listed
                continue
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = tarfile.TarInfo(rel)
                info.size, info.mtime, info.mode = st.st_size, int(st.st_mtime), st.st_mode & 0o755
                try:
                    tar.addfile(info, f)
                except ValueError:  # the name does not fit ustar; nothing was written
                    continue
