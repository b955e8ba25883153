"""Fixtures of the git-source and webhook tests: a folder per module, its repositories and
a git daemon serving them (tests/git_servers.py)."""

from pathlib import Path

import pytest
from fleet import passable
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
