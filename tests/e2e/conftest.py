"""Fixtures of the end-to-end tests: for git sources and webhooks a folder per module, its
repositories and a git daemon serving them (tests/git_servers.py); two primaries of one
fleet on PostgreSQL (several primaries, schedules)."""

import subprocess
from pathlib import Path

import pytest
from fleet import BIN, HEARTBEAT, Primary, passable
from git_servers import GitDaemon, Repos


@pytest.fixture(scope="module")
def git_root(tmp_path_factory, request) -> Path:
    return passable(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]))


@pytest.fixture(scope="module")
def repos(git_root) -> Repos:
    return Repos(git_root / "repos")


@pytest.fixture(scope="module")
def daemon(git_root, repos):
    server = GitDaemon(repos.root, git_root / "git-daemon.log")
    yield server
    server.close()


def init(data_dir: Path, *args: str) -> None:
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *args],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def two_primaries(tmp_path, pg_url, request):
    """Two primaries of one fleet, with a short heartbeat timeout unless the test gives
    serve flags: @pytest.mark.parametrize("two_primaries", [(...)], indirect=True)."""
    first, second = tmp_path / "one", tmp_path / "two"
    init(first, "--store", pg_url)
    init(second, "--store", pg_url, "--vault-key-file", str(first / "vault.key"))
    flags = getattr(request, "param", ("--heartbeat-timeout", str(HEARTBEAT)))
    primaries = [
        Primary(
            data_dir=d,
            serve_args=[*flags, "--primary-worker-slots", "0"],
            log_path=tmp_path / f"{d.name}.log",
        )
        for d in (first, second)
    ]
    try:
        for p in primaries:
            p.start()
        yield primaries
    finally:
        for p in primaries:
            p.close()
