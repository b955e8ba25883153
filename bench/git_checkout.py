"""The checkout's cost on the worker (agent/git_checkout.py): a repository of SIZE MB in
FILES files (random bytes: no delta or compression helps), served from a file:// URL so
the transfer costs little and the figures are the agent's own work. Prints, as JSON:

- first: clone into the agent's clone and write the tree into an empty workspace;
- second: one changed file pushed, the incremental fetch, the one file written (the others
  are checked against the agent's record: agent/work_tree.py) and the workspace's `.git`;
- baseline_checkout: what the old design did for the second run, `git checkout` of the
  new commit in a clone whose work tree is the workspace (only the changed file written).

    sudo .venv/bin/python bench/git_checkout.py [--size-mb 100] [--files 2000]

As root the tree is written by a job uid (65599, as the agent's jobs are); otherwise as
the caller.
"""

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import write_random_tree

from agent.assignment import GitSource
from agent.git_checkout import checkout
from agent.identity import JobIdentity

JOB_UID = 65599
ENV = {
    "PATH": os.environ.get("PATH", os.defpath),
    "HOME": "/",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_repo(root: Path, size_mb: int, files: int) -> tuple[Path, Path]:
    work, bare = root / "work", root / "repo.git"
    git("init", "-q", "-b", "main", str(work), cwd=root)
    write_random_tree(work, size_mb, files)
    git("add", "-A", cwd=work)
    git("commit", "-qm", "one", cwd=work)
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    return work, bare


def push_change(work: Path, bare: Path) -> str:
    (work / "d00" / "f00000.bin").write_bytes(os.urandom(4096))
    git("commit", "-qam", "two", cwd=work)
    git("push", "-q", str(bare), "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def bench_git_checkout(size_mb: int = 100, files: int = 2000) -> dict:
    with tempfile.TemporaryDirectory(prefix="cifleet-bench-git-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o711)
        work, bare = make_repo(root, size_mb, files)
        home, workspace = root / "home", root / "home" / "workspaces" / "bench"
        workspace.mkdir(parents=True)
        identity = JobIdentity()
        if os.geteuid() == 0:
            os.chmod(home, 0o711)
            os.chmod(workspace.parent, 0o711)
            os.chown(workspace, JOB_UID, JOB_UID)
            identity = JobIdentity(JOB_UID, JOB_UID, (), None, str(workspace), dedicated=True)
        url = f"file://{bare}"
        figures: dict = {"size_mb": size_mb, "files": files}
        for name in ("first", "second"):
            sha = git("rev-parse", "main", cwd=bare) if name == "first" else push_change(work, bare)
            source = GitSource(url, "refs/heads/main", sha)
            lines: list[str] = []
            start = time.perf_counter()
            checkout(home, workspace, source, {}, identity, lines, threading.Event())
            figures[f"{name}_s"] = round(time.perf_counter() - start, 3)
            figures[f"{name}_log"] = lines
        # The old design's second run: a clone in the work tree, checked out in place.
        plain = root / "plain"
        git("clone", "-q", url, str(plain), cwd=root)
        git("checkout", "-q", "--detach", "HEAD~1", cwd=plain)
        start = time.perf_counter()
        git("checkout", "-q", "--detach", "main", cwd=plain)
        figures["baseline_checkout_s"] = round(time.perf_counter() - start, 3)
        return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(bench_git_checkout(args.size_mb, args.files), indent=2))
