"""Check out a run's commit in its pipeline's workspace: the first run there clones, later
runs fetch only what is new and check the commit out, as the job's own uid.

The workspace is the clone (`git init` + `fetch`, so static files may already stand in
it). Tracked files are reset to the commit; untracked and ignored files (build output,
caches) stay unless the source says `clean: true`. A job of the pipeline may have changed
`.git/config` (its uid owns it), so the agent writes that file afresh before every fetch:
an `insteadOf`, proxy or extra header left there cannot send the credentials elsewhere.
The credentials reach git as agent.git_auth hands them over: never in argv or a file.
"""

import contextlib
import os
import pwd
import signal
import subprocess
import threading
import time
from pathlib import Path

from agent.assignment import GitSource
from agent.calls import Cancelled
from agent.git_auth import GitAuthError, base_env, scrub, ssh_env, token_env
from agent.identity import JobIdentity
from agent.workspace import PrepareFailed, write_inside

GIT_TIMEOUT_SECONDS = 1800.0  # one git command; a large first clone takes its time
CONFIG = b"[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
CONFIG += b"[gc]\n\tauto = 0\n"  # no background gc: it would race the next run's fetch


def checkout(
    workspace: Path,
    source: GitSource,
    secrets: dict[str, str],
    identity: JobIdentity,
    lines: list[str],
    cancel: threading.Event,
    keep: list[str] | None = None,
) -> dict[str, str]:
    """Check `source.sha` out in `workspace`; return {commit, subject, author}. Appends what
    it did to `lines`; PrepareFailed (with no secret in it) when it cannot."""
    values = [secrets[n] for n in (source.token, source.ssh_key) if n]
    owner = (identity.uid, identity.gid) if identity.uid is not None else None
    git = _Git(workspace, identity, values, cancel)
    fresh = not (workspace / ".git").is_dir() or (workspace / ".git").is_symlink()
    if fresh:
        git.run("init", "-q")
    # Written by the agent, through descriptors that follow no link (agent.workspace).
    try:
        write_inside(workspace, ".git/config", CONFIG, owner, mode=0o644)
    except OSError as e:
        raise PrepareFailed(
            f"git: cannot write .git/config in the workspace: {e.strerror}"
        ) from None
    before = 0 if fresh else git.object_count()
    env = base_env(home=identity.home or str(workspace))
    tracking = (
        source.ref
        if source.ref.startswith("refs/tags/")
        else ("refs/remotes/origin/" + source.ref.removeprefix("refs/heads/"))
    )
    try:
        if source.token:
            env |= token_env(source.username, secrets[source.token])
            git.fetch(env, source, tracking)
        elif source.url.startswith(("ssh://",)) or _scp_like(source.url):
            key = secrets[source.ssh_key] if source.ssh_key else None
            needs_entry = identity.uid is not None and not _has_passwd_entry(identity.uid)
            with ssh_env(
                source.known_hosts, key, identity.uid, identity.gid, needs_entry, env["HOME"]
            ) as extra:
                git.fetch(env | extra, source, tracking)
        else:
            git.fetch(env, source, tracking)
    except GitAuthError as e:
        raise PrepareFailed(f"git: {scrub(str(e), values)}") from None
    git.run(
        "-c",
        "advice.detachedHead=false",
        "checkout",
        "-q",
        "--force",
        "--detach",
        f"{source.sha}^{{commit}}",
    )
    if source.clean:
        excludes = [arg for path in keep or [] for arg in ("-e", f"/{path}")]
        git.run("clean", "-ffdxq", *excludes)
        lines.append("git: removed untracked and ignored files (clean: true)")
    after = git.object_count()
    if fresh:
        lines.append(f"git: cloned {source.url} ({after} objects)")
    else:
        lines.append(
            f"git: fetched {after - before} new objects into the clone kept from earlier runs"
            f" ({after} in all)"
        )
    commit, author, subject = git.output("log", "-1", "--format=%H%n%an <%ae>%n%s", "HEAD").split(
        "\n", 2
    )[:3]
    lines.append(f"git: checked out {commit} ({source.ref}): {subject} ({author})")
    return {"commit": commit, "subject": subject[:500], "author": author[:500]}


def _has_passwd_entry(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _scp_like(url: str) -> bool:
    return "://" not in url and "@" in url.split(":", 1)[0]


class _Git:
    def __init__(self, workspace: Path, identity: JobIdentity, secrets: list[str], cancel):
        self.workspace = workspace
        self.identity = identity
        self.secrets = secrets
        self.cancel = cancel
        self.env = base_env(home=identity.home or str(workspace))

    def fetch(self, env: dict[str, str], source: GitSource, tracking: str) -> None:
        """The ref's new objects; the commit by its id if the ref no longer reaches it (a
        force-push after the trigger), which servers allow when it is still reachable."""
        self.run("fetch", "-q", "--no-tags", "--", source.url, f"+{source.ref}:{tracking}", env=env)
        if not self.has(source.sha):
            with contextlib.suppress(PrepareFailed):
                self.run("fetch", "-q", "--no-tags", "--", source.url, source.sha, env=env)
            if not self.has(source.sha):
                raise PrepareFailed(
                    f"git: commit {source.sha} is not on {source.ref} of {source.url} any more"
                    " (force-pushed away?)"
                )

    def has(self, sha: str) -> bool:
        return self._run(("cat-file", "-e", f"{sha}^{{commit}}"), self.env)[0] == 0

    def object_count(self) -> int:
        counts = dict(
            line.split(": ", 1) for line in self.output("count-objects", "-v").splitlines()
        )
        return int(counts.get("count", 0)) + int(counts.get("in-pack", 0))

    def output(self, *args: str) -> str:
        return self.run(*args).strip()

    def run(self, *args: str, env: dict[str, str] | None = None) -> str:
        code, out, err = self._run(args, env or self.env)
        if code != 0:
            what = scrub(err.strip() or out.strip() or f"exit status {code}", self.secrets)
            lines = [line for line in what.splitlines() if line.strip()][-3:]
            raise PrepareFailed(f"git {args[0]} failed: {' / '.join(lines)[:1000]}")
        return out

    def _run(self, args, env: dict[str, str]) -> tuple[int, str, str]:
        if self.cancel.is_set():
            raise Cancelled()
        try:
            proc = subprocess.Popen(
                ["git", *args],
                cwd=self.workspace,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                **self.identity.popen_kwargs(),
            )
        except OSError as e:
            raise PrepareFailed(f"git: cannot run git on this worker: {e.strerror}") from None
        deadline = time.monotonic() + GIT_TIMEOUT_SECONDS
        while True:
            try:
                out, err = proc.communicate(timeout=0.05)
                return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
            except subprocess.TimeoutExpired:
                pass
            if self.cancel.is_set() or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                if self.cancel.is_set():
                    raise Cancelled()
                raise PrepareFailed(
                    f"git {args[0]}: still running after {GIT_TIMEOUT_SECONDS:.0f} s"
                )
