"""Who a job runs as: never as the agent itself, when the agent can help it.

The agent's home holds its key, certificate and config; a job that could read them could
act as this worker. So an agent running as root runs jobs as someone else:

- `pipeline-uids` (the default as root): each pipeline's workspace gets a uid (and a gid of
  the same number) of its own from the range in the config (`job_uids`, default
  65536-66535, which neither systemd nor the usual /etc/subuid ranges hand out), claimed
  in the host-wide registry (agent.uid_registry). Its jobs run with it, with no
  supplementary groups and HOME in the workspace, and cannot read another pipeline's
  workspace (0700) or the agent's home. The uid has no passwd entry: `id -un`, `whoami`
  and the ssh client fail, git needs user.name/email configured (docs/security.md). When
  the workspace is deleted the uid is freed: its processes are ended and its files in the
  shared temporary folders removed first.
- `job-user` (as root, `job_user` in the config): every job runs as that existing account
  (with its groups, HOME its home). Pipelines then share one identity and can read each
  other's workspaces; installs that need a real account (ssh) choose it knowingly.
- `shared` (the agent is not root): it cannot switch users, so jobs run as the agent and
  can read its key. The agent says so at start and in every poll; the primary shows it.

A pipeline that asks for root (run_as_root, on a worker an admin allowed) runs as root.
"""

import grp
import logging
import os
import pwd
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.procs import end_uid_processes, processes_of_uid, remove_uid_temp_files
from agent.uid_registry import Claim, Claims, RegistryError, UidRegistry

log = logging.getLogger(__name__)

DEFAULT_JOB_UIDS = (65536, 66535)
MODE_UIDS = "pipeline-uids"
MODE_USER = "job-user"
MODE_SHARED = "shared"
WORKSPACE_MODE = 0o700
WORK_DIR_MODE = 0o711  # jobs may pass through to their own workspace, not list the others
RELEASE_GRACE_SECONDS = 5.0  # SIGTERM grace for what a freed uid still runs
SUBID_FILES = ("/etc/subuid", "/etc/subgid")


class IdentityError(Exception):
    """Jobs cannot be given the identity they need; the message says why and what to do."""


@dataclass(frozen=True)
class JobIdentity:
    """What one run's jobs run as."""

    uid: int | None = None  # None: the agent's own user (no switch)
    gid: int | None = None
    groups: tuple[int, ...] = ()
    user: str | None = None  # its passwd name, when it has one
    home: str | None = None  # the jobs' HOME; None: the agent's
    dedicated: bool = False  # a uid that only this pipeline's jobs use
    env: dict[str, str] = field(default_factory=dict)  # USER, LOGNAME for a named account

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}


def parse_uid_range(text: str) -> tuple[int, int]:
    """`START-END` → (start, end); ValueError with a one-line reason."""
    start_text, sep, end_text = text.partition("-")
    if not sep or not start_text.isdigit() or not end_text.isdigit():
        raise ValueError(f"job uids must be START-END, e.g. 65536-66535, not {text!r}")
    return check_uid_range(int(start_text), int(end_text))


def check_uid_range(start: int, end: int) -> tuple[int, int]:
    if not 1000 <= start <= end < 2**32 - 1:
        raise ValueError(
            f"job uids {start}-{end}: must be a range of at least one uid from 1000 up,"
            " below 4294967295"
        )
    if start <= 65534 <= end or start <= 65535 <= end:
        raise ValueError(f"job uids {start}-{end}: must not contain 65534 (nobody) or 65535")
    return start, end


class JobIdentities:
    def __init__(
        self,
        home: Path,
        work_dir: Path,
        config: dict[str, Any],
        registry: UidRegistry | None = None,
    ) -> None:
        self.home = Path(home)
        self.work_dir = Path(work_dir)
        self.is_root = os.geteuid() == 0
        raw = config.get("job_uids") or DEFAULT_JOB_UIDS
        self.uids = check_uid_range(int(raw[0]), int(raw[1]))
        self.user: str | None = config.get("job_user") or None
        self.registry = registry or UidRegistry()
        if not self.is_root:
            self.mode = MODE_SHARED
        elif self.user:
            self.mode = MODE_USER
        else:
            self.mode = MODE_UIDS

    # -- At start.

    def describe(self) -> dict[str, Any]:
        """For the poll, so the primary can show who jobs run as."""
        if self.mode == MODE_UIDS:
            return {"mode": MODE_UIDS, "uids": list(self.uids)}
        if self.mode == MODE_USER:
            return {"mode": MODE_USER, "user": self.user}
        return {"mode": MODE_SHARED, "uid": os.geteuid()}

    def summary(self) -> str:
        if self.mode == MODE_UIDS:
            return "each pipeline's jobs run as a uid of their own from {}-{}".format(*self.uids)
        if self.mode == MODE_USER:
            return f"jobs run as the user {self.user} (all pipelines share it)"
        return (
            f"jobs share the agent's identity (uid {os.geteuid()}): this agent is not root and"
            " cannot switch users, so a job can read its key, certificate and config. Run the"
            " agent as root to give each pipeline's jobs a uid of their own"
        )

    def prepare(self) -> None:
        """Make the work dir reachable for jobs (and check it): IdentityError if it is not."""
        if self.mode == MODE_SHARED:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            return
        if self.mode == MODE_USER:
            self._named_account()  # IdentityError for a user that does not exist
        self.work_dir.mkdir(mode=WORK_DIR_MODE, parents=True, exist_ok=True)
        os.chown(self.work_dir, 0, 0)
        os.chmod(self.work_dir, WORK_DIR_MODE)
        self._close_folders()
        uid, gids = self._probe()
        for folder in reversed(self.work_dir.parents):
            st = os.stat(folder)
            if _can_traverse(st, uid, gids):
                continue
            if folder == self.home and st.st_uid == 0:
                os.chmod(folder, stat.S_IMODE(st.st_mode) | 0o011)  # only passing through
                continue
            raise IdentityError(
                f"jobs (run as {'uid ' + str(uid) if self.mode == MODE_UIDS else self.user})"
                f" could not reach their workspaces in {self.work_dir}: {folder} is mode"
                f" {stat.S_IMODE(st.st_mode):04o}. Let others pass through it (chmod o+x"
                f" {folder}) or register with --work-dir in a folder they can reach"
            )
        if self.mode == MODE_UIDS:
            try:
                with self.registry.locked():
                    pass  # a registry that cannot be written fails here, not in a run
            except RegistryError as e:
                raise IdentityError(str(e)) from None
            start, end = self.uids
            accounts = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
            overlap = sum(1 for u in accounts if start <= u <= end)
            if overlap:
                log.warning(
                    "job uids %d-%d: %d of them have passwd or group entries and are skipped",
                    *self.uids,
                    overlap,
                )

    def _close_folders(self) -> None:
        """Workspaces (and trash) an agent before job identities left open (0755, its own
        files 0644) are closed to everyone else now, not at their pipeline's next run: a
        job must not read another pipeline's old workspace meanwhile."""
        for folder in [*self.work_dir.iterdir(), self.home / "trash"]:
            try:
                st = os.lstat(folder)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(folder, stat.S_IMODE(st.st_mode) & 0o700)

    def _probe(self) -> tuple[int, tuple[int, ...]]:
        """Who must be able to reach the work dir: a uid of the range, or the named user."""
        if self.mode == MODE_USER:
            account = self._named_account()
            return account.pw_uid, tuple(os.getgrouplist(account.pw_name, account.pw_gid))
        return self.uids[0], ()

    def _named_account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise IdentityError(
                f"the job user {self.user!r} does not exist on this host; create it, or"
                " register without --job-user to give each pipeline a uid of its own"
            ) from None

    def leftover_uids(self) -> list[int]:
        """The uids this home's pipelines hold (their processes are ended at start)."""
        if self.mode != MODE_UIDS:
            return []
        with self.registry.locked() as claims:
            return sorted(claims.of_home(str(self.home)).values())

    # -- Per run.

    def for_run(self, pipeline: str, as_root: bool = False) -> JobIdentity:
        """The identity of this run's jobs; its workspace exists, owned by it (0700)."""
        workspace = self.work_dir / pipeline
        if as_root:
            if not self.is_root:
                raise IdentityError(
                    "the pipeline asks to run as root (run_as_root), but this agent is not root"
                )
            _own_workspace(workspace, 0, 0)
            return JobIdentity(0, 0, (), "root", str(workspace))
        if self.mode == MODE_SHARED:
            workspace.mkdir(parents=True, exist_ok=True)
            return JobIdentity()
        if self.mode == MODE_USER:
            account = self._named_account()
            _own_workspace(workspace, account.pw_uid, account.pw_gid)
            groups = tuple(g for g in os.getgrouplist(account.pw_name, account.pw_gid))
            return JobIdentity(
                account.pw_uid,
                account.pw_gid,
                groups,
                account.pw_name,
                account.pw_dir,
                env={"USER": account.pw_name, "LOGNAME": account.pw_name},
            )
        try:
            with self.registry.locked() as claims:
                uid = claims.of(str(self.home), pipeline)
                if uid is None:
                    uid = self._claim(claims, pipeline, workspace)
                _own_workspace(workspace, uid, uid)
        except RegistryError as e:
            raise IdentityError(str(e)) from None
        return JobIdentity(uid, uid, (), None, str(workspace), dedicated=True)

    def _claim(self, claims: Claims, pipeline: str, workspace: Path) -> int:
        start, end = self.uids
        stale = None
        for uid in range(start, end + 1):
            claim = claims.get(uid)
            if claim is not None:
                if stale is None and claim.stale():
                    stale = uid
                continue
            if _has_entry(uid) or _subordinate(uid) or processes_of_uid(uid, thorough=True):
                continue
            claims.put(uid, Claim(str(self.home), pipeline, str(workspace)))
            return uid
        if stale is None:
            raise IdentityError(
                f"no free job uid in {start}-{end}: every one holds a pipeline workspace on"
                " this host; register with a wider --job-uids range, or clear caches"
            )
        old = claims.get(stale)
        log.info("job uid %d: taking it over from %s (its workspace is gone)", stale, old)
        _clear_uid(stale)
        claims.put(stale, Claim(str(self.home), pipeline, str(workspace)))
        return stale

    def release(self, pipeline: str) -> None:
        """The pipeline's workspace is gone: end what its uid still runs, delete its
        temporary files, and give the uid back."""
        if self.mode != MODE_UIDS:
            return
        with self.registry.locked() as claims:
            uid = claims.of(str(self.home), pipeline)
            if uid is None:
                return
            if not claims.get(uid).stale():
                # A run of the pipeline made its workspace again since the deletion (this
                # runs in the background, later): the uid is that run's, and its job runs.
                log.info("job uid %d of pipeline %s: kept, its workspace is back", uid, pipeline)
                return
            _clear_uid(uid)
            claims.drop(uid)
        log.info("job uid %d of pipeline %s is free again", uid, pipeline)


def _clear_uid(uid: int) -> None:
    ended = end_uid_processes(uid, RELEASE_GRACE_SECONDS)
    removed = remove_uid_temp_files(uid)
    if ended or removed:
        log.warning(
            "job uid %d: ended %d leftover process(es), removed %d temporary file(s)",
            uid,
            len(ended),
            len(removed),
        )


def _own_workspace(workspace: Path, uid: int, gid: int) -> None:
    """Create the workspace owned by uid:gid, 0700, or make an existing one theirs."""
    try:
        st = os.lstat(workspace)
    except FileNotFoundError:
        os.mkdir(workspace, WORKSPACE_MODE)
        os.chown(workspace, uid, gid)
        os.chmod(workspace, WORKSPACE_MODE)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise IdentityError(f"the workspace {workspace} is not a folder")
    if (st.st_uid, st.st_gid) != (uid, gid):
        chown_tree(workspace, uid, gid)
    if stat.S_IMODE(st.st_mode) != WORKSPACE_MODE:
        os.chmod(workspace, WORKSPACE_MODE)


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """Give a whole tree to uid:gid without following a link anywhere (a job may have left
    links to files it must not get)."""
    os.chown(root, uid, gid, follow_symlinks=False)
    for _dirpath, dirnames, filenames, dirfd in os.fwalk(root, follow_symlinks=False):
        for name in dirnames + filenames:
            os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)


def _can_traverse(st: os.stat_result, uid: int, gids: tuple[int, ...]) -> bool:
    mode = st.st_mode
    if st.st_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def _has_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        pass
    try:
        grp.getgrgid(uid)
        return True
    except KeyError:
        return False


def _subordinate(uid: int) -> bool:
    """Whether uid lies in a range /etc/subuid or /etc/subgid gives some user for its user
    namespaces (rootless containers): their files are owned by those ids."""
    for path in SUBID_FILES:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if (
                len(parts) == 3
                and parts[1].isdigit()
                and parts[2].isdigit()
                and int(parts[1]) <= uid < int(parts[1]) + int(parts[2])
            ):
                return True
    return False
