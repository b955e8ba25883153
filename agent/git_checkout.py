"""Check out a run's commit into its pipeline's workspace. The clone is the agent's; the
work tree is the job's.

- **The clone** (`HOME/git/PIPELINE.git`, bare, 0700 in a 0700 folder, the agent's) is
  out of every job's reach: a job can neither leave a hook, a `commondir` or an
  `alternates` there nor change an object. The first run clones (`init` + `fetch`), later
  runs fetch only what is new. Git runs there as the agent, with no system or global
  config, HOME in the clone itself (no `.netrc`), no hooks, no fsmonitor, only the
  source's transport and no redirects (agent.git_auth.remote_env).
- **The work tree** is written into the workspace by processes of the job's own identity,
  from a `git archive` of the commit the agent streams to them: first the files the last
  checkout had and this commit has not are deleted, then whatever stands where a file or
  folder of the commit goes is removed, then the files that differ from what the agent
  wrote last time (agent.work_tree: recorded inode and ctime) are unpacked. So every
  tracked file is exactly the commit's, whatever a job did; untracked and ignored files
  (build output, caches) stay unless the source says `clean: true`. The agent never runs
  git inside the workspace and never writes there itself.
- **The workspace's `.git`** is made afresh by the job's identity every run, for jobs that
  ask git about their commit: HEAD at the commit, a shallow history of that one commit
  and its trees (no file contents but the links'), and an index, so `git rev-parse HEAD`,
  `git log -1`, `git status` and `git describe --always --dirty` work. Whatever a job
  leaves in it is thrown away with it before the next run writes anything.
"""

import os
import shutil
import stat
import threading
from pathlib import Path

from agent import work_tree
from agent.assignment import GitSource
from agent.git_auth import GitAuthError, base_env, remote_env, scrub, ssh_env
from agent.git_commands import Commands, Step
from agent.home import git_dir, write_atomic
from agent.identity import JobIdentity
from agent.workspace import PrepareFailed

CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
CONFIG += b"[gc]\n\tauto = 0\n"  # no background gc: it would race the next run's fetch
WORKSPACE_REF = "refs/cifleet/workspace"  # the commit last written into the workspace
RECORD_FILE = "cifleet-workspace.json"  # what was written there (agent.work_tree)
# Git settings for every command, remote or not: nothing of a repository may run code.
LOCAL_CONFIG = {
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "core.hooksPath",
    "GIT_CONFIG_VALUE_0": "/dev/null",
    "GIT_CONFIG_KEY_1": "core.fsmonitor",
    "GIT_CONFIG_VALUE_1": "false",
}
# Run by the job's identity in the workspace, the pack of the commit and its trees on stdin.
MAKE_DOT_GIT = (
    "set -e; rm -rf -- .git; git init -q; git index-pack --stdin >/dev/null;"
    ' printf "%s\\n" "$1" >.git/shallow; git update-ref --no-deref HEAD "$1";'
    ' git read-tree "$1"'
)


def checkout(
    home: Path,
    workspace: Path,
    source: GitSource,
    secrets: dict[str, str],
    identity: JobIdentity,
    lines: list[str],
    cancel: threading.Event,
    keep: list[str] | None = None,
    fresh: bool = False,
) -> dict[str, str]:
    """Check `source.sha` out into `workspace`; return {commit, subject, author}. `fresh`:
    the workspace was just emptied, so the clone starts again too. Appends what it did to
    `lines`; PrepareFailed (with no secret in it) when it cannot."""
    values = [secrets[n] for n in (source.token, source.ssh_key) if n]
    commands = Commands(cancel, values)
    repo = git_dir(home, workspace.name)
    cloned = _open_clone(repo, commands, fresh)
    git = _AgentGit(repo, commands)
    before = 0 if cloned else git.object_count()
    _fetch(git, source, secrets, values)
    commit = git.output("rev-parse", "--verify", f"{source.sha}^{{commit}}")
    _write_tree(git, commands, workspace, commit, identity, source.clean, keep or [])
    after = git.object_count()
    if cloned:
        lines.append(f"git: cloned {source.url} ({after} objects)")
    else:
        lines.append(
            f"git: fetched {after - before} new objects into the clone kept from earlier runs"
            f" ({after} in all)"
        )
    if source.clean:
        lines.append("git: removed untracked and ignored files (clean: true)")
    author, _, subject = git.output("log", "-1", "--format=%an <%ae>%n%s", commit).partition("\n")
    lines.append(f"git: checked out {commit} ({source.ref}): {subject} ({author})")
    return {"commit": commit, "subject": subject[:500], "author": author[:500]}


def _open_clone(repo: Path, commands: Commands, fresh: bool) -> bool:
    """Make sure the agent's clone exists and is its own; True if it was made now."""
    folder = repo.parent
    folder.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PrepareFailed(f"git: {folder} is not a folder of the agent's own")
    os.chmod(folder, 0o700)
    made = fresh or not repo.is_dir() or repo.is_symlink() or os.lstat(repo).st_uid != os.geteuid()
    if made:
        if repo.is_symlink() or repo.is_file():
            repo.unlink()
        shutil.rmtree(repo, ignore_errors=True)
        commands.run(
            Step(["git", "init", "-q", "--bare", str(repo)], folder, base_env(str(folder)))
        )
    os.chmod(repo, 0o700)
    write_atomic(repo / "config", CONFIG)  # the agent's own settings, nothing else's
    return made


def _fetch(git: "_AgentGit", source: GitSource, secrets: dict[str, str], values: list[str]):
    tracking = (
        source.ref
        if source.ref.startswith("refs/tags/")
        else ("refs/remotes/origin/" + source.ref.removeprefix("refs/heads/"))
    )
    token = secrets[source.token] if source.token else None
    ca_file = None
    if source.ca:
        ca_file = git.repo / "cifleet-ca.pem"  # no secret, and out of jobs' reach anyway
        write_atomic(ca_file, source.ca.encode())
    try:
        env = git.env | remote_env(source.url, source.username, token, ca_file and str(ca_file))
        if source.ssh_key is not None or source.url.startswith("ssh://") or _scp_like(source.url):
            key = secrets[source.ssh_key] if source.ssh_key else None
            # As the agent: its helper folder and ssh-agent are its own, never the job's.
            with ssh_env(source.known_hosts, key) as extra:
                git.fetch(env | extra, source, tracking)
        else:
            git.fetch(env, source, tracking)
    except GitAuthError as e:
        raise PrepareFailed(f"git: {scrub(str(e), values)}") from None


def _write_tree(
    git: "_AgentGit",
    commands: Commands,
    workspace: Path,
    commit: str,
    identity: JobIdentity,
    clean: bool,
    keep: list[str],
) -> None:
    job_env = base_env(home=str(workspace)) | LOCAL_CONFIG
    entries = git.tree(commit)
    previous = git.output("rev-parse", "-q", "--verify", WORKSPACE_REF, check=False)
    record_file = git.repo / RECORD_FILE
    record = work_tree.read_record(record_file) if previous else None
    todo = work_tree.plan(workspace, entries, record)
    # The job's .git is thrown away and made afresh below (MAKE_DOT_GIT); a tree never
    # holds a .git of its own, so nothing written in between goes into it.
    remove = list(todo.remove)
    if previous and previous != commit:
        remove += git.output_z(
            "diff-tree", "-r", "-z", "--name-only", "--no-renames", "--diff-filter=D",
            previous, commit,
        )  # fmt: skip
    if remove:  # a process as the job's uid costs tens of ms: only when there is work
        commands.run(
            Step(["xargs", "-0", "-r", "rm", "-rf", "--"], workspace, job_env, identity, "rm"),
            stdin=b"".join(p.encode(errors="surrogateescape") + b"\0" for p in remove),
        )
    # Forgotten before the files are written: if that fails halfway, the next run writes
    # every file, and still deletes what this commit has and its own has not.
    record_file.unlink(missing_ok=True)
    git.run("update-ref", WORKSPACE_REF, commit)
    tar = Step(
        ["tar", "-x", "-m", "-f", "-", "--no-same-owner", "--no-same-permissions"],
        workspace, job_env, identity, "tar",
    )  # fmt: skip
    if todo.everything:
        commands.run(git.step("archive", "--format=tar", commit), tar)
    for chunk in _chunks(todo.write if not todo.everything else []):
        commands.run(
            git.step("--literal-pathspecs", "archive", "--format=tar", commit, "--", *chunk), tar
        )
    work_tree.write_record(record_file, work_tree.record_of(workspace, entries, todo.unchanged))
    objects = git.output("rev-list", "--objects", "--no-walk", "--filter=blob:none", commit)
    objects += "".join(f"\n{oid}" for mode, oid, _ in entries if mode == work_tree.LINK)
    commands.run(
        git.step("pack-objects", "--stdout", "-q"),
        Step(["sh", "-c", MAKE_DOT_GIT, "cifleet-git", commit], workspace, job_env, identity,
             "making the workspace's .git"),
        stdin=objects.encode() + b"\n",
    )  # fmt: skip
    if clean:
        excludes = [arg for path in keep for arg in ("-e", f"/{path}")]
        commands.run(
            Step(["git", "clean", "-ffdxq", *excludes], workspace, job_env, identity, "git clean")
        )


def _chunks(paths: list[str], limit: int = 64 * 1024) -> list[list[str]]:
    """`paths` in argument lists of at most `limit` bytes each."""
    chunks: list[list[str]] = []
    size = limit
    for path in paths:
        if size + len(path) + 1 > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(path)
        size += len(path) + 1
    return chunks


def _scp_like(url: str) -> bool:
    return "://" not in url and "@" in url.split(":", 1)[0]


class _AgentGit:
    """Git on the agent's own clone, as the agent."""

    def __init__(self, repo: Path, commands: Commands) -> None:
        self.repo = repo
        self.commands = commands
        self.env = base_env(home=str(repo)) | {"GIT_DIR": str(repo)} | LOCAL_CONFIG

    def step(self, *args: str, env: dict[str, str] | None = None) -> Step:
        return Step(["git", *args], self.repo, env or self.env)

    def run(self, *args: str, env: dict[str, str] | None = None) -> bytes:
        return self.commands.run(self.step(*args, env=env))

    def output(self, *args: str, check: bool = True) -> str:
        if check:
            return self.run(*args).decode(errors="replace").strip()
        code, out, _ = self.commands.attempt(self.step(*args))
        return out.decode(errors="replace").strip() if code == 0 else ""

    def output_z(self, *args: str) -> list[str]:
        return [p for p in self.run(*args).decode(errors="surrogateescape").split("\0") if p]

    def tree(self, commit: str) -> list[tuple[str, str, str]]:
        """(mode, object id, path) of every folder, file, link and submodule of the commit."""
        entries = []
        for record in self.output_z("ls-tree", "-r", "-t", "-z", "--full-tree", commit):
            info, _, path = record.partition("\t")
            mode, _kind, oid = info.split(" ")
            entries.append((mode, oid, path))
        return entries

    def fetch(self, env: dict[str, str], source: GitSource, tracking: str) -> None:
        """The ref's new objects; the commit by its id if the ref no longer reaches it (a
        force-push after the trigger), which servers allow when it is still reachable."""
        self.run("fetch", "-q", "--no-tags", "--", source.url, f"+{source.ref}:{tracking}", env=env)
        if not self.has(source.sha):
            self.commands.attempt(
                self.step("fetch", "-q", "--no-tags", "--", source.url, source.sha, env=env)
            )
            if not self.has(source.sha):
                raise PrepareFailed(
                    f"git: commit {source.sha} is not on {source.ref} of {source.url} any more"
                    " (force-pushed away?)"
                )

    def has(self, sha: str) -> bool:
        return self.commands.attempt(self.step("cat-file", "-e", f"{sha}^{{commit}}"))[0] == 0

    def object_count(self) -> int:
        counts = dict(
            line.split(": ", 1)
            for line in self.output("count-objects", "-v").splitlines()
            if ": " in line
        )
        return int(counts.get("count", 0)) + int(counts.get("in-pack", 0))
