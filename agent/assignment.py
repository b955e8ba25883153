"""An assignment from a poll answer, checked and typed.

Names end up in file names and URL paths, so they are checked against NAME_RE here, once.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import NAME_RE

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")  # SHA-1, or SHA-256 repositories
FULL_REF_RE = re.compile(r"^refs/(heads|tags)/[A-Za-z0-9._][A-Za-z0-9._/+-]{0,254}$")


@dataclass(frozen=True)
class Job:
    name: str
    steps: list[str]
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds; None: no limit
    needs: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # names put into this job's environment
    # Globs inside the workspace whose files are uploaded after the job (agent/artifacts.py).
    artifacts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class StaticFile:
    # Only the type is checked here; whether the path stays inside the workspace is checked
    # when it is written (agent.workspace), so a bad path fails the run visibly instead of
    # the assignment being ignored until its lease runs out, again and again.
    path: str
    sha256: str  # lowercase hex
    size: int


@dataclass(frozen=True)
class GitSource:
    """The repository a run builds, at one exact commit (resolved by the primary)."""

    url: str
    ref: str  # refs/heads/NAME or refs/tags/NAME
    sha: str  # what to check out: the commit (or an annotated tag's object)
    clean: bool = False  # remove untracked and ignored files before the jobs
    username: str = ""
    token: str | None = None  # names of secrets in the assignment
    ssh_key: str | None = None
    known_hosts: str = ""
    ca: str = ""  # https: PEM certificates to trust instead of the system's


@dataclass(frozen=True)
class Assignment:
    run_id: int
    attempt: int
    pipeline: str
    jobs: list[Job]
    env: dict[str, str] = field(default_factory=dict)
    clean_workspace: bool = False  # empty the workspace before anything else
    files: list[StaticFile] = field(default_factory=list)
    # Pipeline secrets' values: into the environment of the jobs that name them, and
    # masked as *** in every job's log.
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    run_as_root: bool = False  # the pipeline asked for root, on a worker an admin allowed
    source: GitSource | None = None

    @property
    def key(self) -> tuple[int, int]:
        return (self.run_id, self.attempt)


def parse_assignment(data: Any) -> Assignment:
    """Build an Assignment from the JSON of a poll answer; ValueError says what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("assignment is not an object")
    run_id, attempt = data.get("run_id"), data.get("attempt")
    if not _is_int(run_id) or not _is_int(attempt):
        raise ValueError("assignment lacks an integer run_id or attempt")
    pipeline = data.get("pipeline")
    if not isinstance(pipeline, str) or not NAME_RE.match(pipeline):
        raise ValueError(f"bad pipeline name {pipeline!r}")
    jobs_data = data.get("jobs")
    if not isinstance(jobs_data, list):
        raise ValueError("assignment lacks a job list")
    jobs = [_parse_job(j) for j in jobs_data]
    if len({j.name for j in jobs}) != len(jobs):
        raise ValueError("duplicate job names")
    clean = data.get("clean_workspace", False)
    if not isinstance(clean, bool):
        raise ValueError(f"clean_workspace must be true or false, not {clean!r}")
    files_data = data.get("files") or []
    if not isinstance(files_data, list):
        raise ValueError("files must be a list")
    files = [_parse_file(f) for f in files_data]
    if len({f.path for f in files}) != len(files):
        raise ValueError("duplicate static file paths")
    secrets = _env(data.get("secrets"))
    for job in jobs:
        if set(job.secrets) - set(secrets):
            raise ValueError(f"job {job.name}: names secrets the assignment does not carry")
    as_root = data.get("run_as_root", False)
    if not isinstance(as_root, bool):
        raise ValueError(f"run_as_root must be true or false, not {as_root!r}")
    env = _env(data.get("env"))
    source = _parse_source(data.get("source"), secrets)
    return Assignment(run_id, attempt, pipeline, jobs, env, clean, files, secrets, as_root, source)


def _parse_source(data: Any, secrets: dict[str, str]) -> GitSource | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ValueError("source is not an object")
    url, ref, sha = data.get("git"), data.get("ref"), data.get("sha")
    # The URL goes after `--` on git's command line; it may not pass for an option anyway.
    if not isinstance(url, str) or not url or url.startswith("-") or not url.isprintable():
        raise ValueError("source: bad git URL")
    if not isinstance(ref, str) or not FULL_REF_RE.match(ref) or ".." in ref:
        raise ValueError(f"source: bad ref {ref!r}")
    if not isinstance(sha, str) or not COMMIT_RE.match(sha):
        raise ValueError(f"source: bad commit {sha!r}")
    for key in ("token", "ssh_key"):
        if data.get(key) is not None and data[key] not in secrets:
            raise ValueError(f"source: {key} names a secret the assignment does not carry")
    clean, username, hosts, ca = (
        data.get("clean", False),
        data.get("username", ""),
        data.get("known_hosts", ""),
        data.get("ca", ""),
    )
    if not isinstance(clean, bool) or not all(isinstance(v, str) for v in (username, hosts, ca)):
        raise ValueError("source: bad clean, username, known_hosts or ca")
    return GitSource(
        url, ref, sha, clean, username, data.get("token"), data.get("ssh_key"), hosts, ca
    )


def _parse_file(data: Any) -> StaticFile:
    if not isinstance(data, dict):
        raise ValueError("static file is not an object")
    path, sha256, size = data.get("path"), data.get("sha256"), data.get("size")
    if not isinstance(path, str) or not path:
        raise ValueError(f"bad static file path {path!r}")
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256.lower()):
        raise ValueError(f"static file {path}: bad sha256 {sha256!r}")
    if not _is_int(size) or size < 0:
        raise ValueError(f"static file {path}: bad size {size!r}")
    return StaticFile(path, sha256.lower(), size)


def _parse_job(data: Any) -> Job:
    if not isinstance(data, dict):
        raise ValueError("job is not an object")
    name = data.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"bad job name {name!r}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise ValueError(f"job {name}: steps must be a list of strings")
    timeout = data.get("timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError(f"job {name}: bad timeout {timeout!r}")
    needs = data.get("needs") or []
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise ValueError(f"job {name}: needs must be a list of job names")
    secrets = data.get("secrets") or []
    if not isinstance(secrets, list) or not all(isinstance(n, str) for n in secrets):
        raise ValueError(f"job {name}: secrets must be a list of names")
    artifacts = data.get("artifacts") or []
    if not isinstance(artifacts, list) or not all(isinstance(a, str) for a in artifacts):
        raise ValueError(f"job {name}: artifacts must be a list of paths")
    return Job(
        name,
        list(steps),
        _env(data.get("env")),
        timeout,
        list(needs),
        list(secrets),
        list(artifacts),
    )


def _env(data: Any) -> dict[str, str]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("env must be an object")
    # JSON numbers and booleans become their text; null becomes "".
    env = {str(k): "" if v is None else _text(v) for k, v in data.items()}
    for k, v in env.items():
        # exec refuses these; better to say so than to fail inside Popen.
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError(f"bad environment variable {k!r}")
    return env


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
