"""A throwaway PostgreSQL server for tests and benchmarks: `initdb` and `pg_ctl` from
Debian's `postgresql` package (tests/run.sh installs it), in a temporary folder, listening
only on a Unix socket in that folder (no TCP port another process could take or reach).

PostgreSQL refuses to run as root; as root, the cluster's folder belongs to `nobody` and
its programs run as that user.
"""

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from leftovers import ended_runs, hold_lock, kill_what_ended_runs_left

# For a test module whose tests must hold on both stores: `pytestmark = both_engines`
# (the `engine` fixture of tests/conftest.py).
both_engines = pytest.mark.parametrize("engine", ("sqlite", "postgresql"), indirect=True)

SUPERUSER = "cifleet"
ROOT_PREFIX = "cifleet-pg-"
PORT = 5432  # only in the socket's name (.s.PGSQL.5432): there is no TCP listener


def _bindir() -> Path:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL's initdb was not found: apt-get install postgresql")
    return Path(initdb).parent


def _remove_ended_clusters() -> None:
    """The servers of runs that were killed before they could stop them, and their files."""
    pattern = str(Path(tempfile.gettempdir()) / (ROOT_PREFIX + "*"))
    kill_what_ended_runs_left(pattern)
    for root in ended_runs(pattern):
        shutil.rmtree(root, ignore_errors=True)


class PgCluster:
    def __init__(self, fast: bool = True):
        """`fast`: no fsync (tests, which never crash the host); False for benchmarks."""
        self.fast = fast
        self.bindir = _bindir()
        _remove_ended_clusters()
        self.root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        self._lock = hold_lock(self.root)  # until this process ends
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self._user = None
        if os.geteuid() == 0:
            self._user = "nobody"
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        self._names = itertools.count(1)
        self.running = False

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=self._user,
            cwd=self.root,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}")

    def start(self) -> "PgCluster":
        if not self.data.exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                "--locale=C.UTF-8", "--no-instructions",
            )  # fmt: skip
            self.socket_dir.mkdir(exist_ok=True)
            if self._user:
                nobody = pwd.getpwnam(self._user)
                os.chown(self.socket_dir, nobody.pw_uid, nobody.pw_gid)
        options = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories={self.socket_dir}",
            f"-c port={PORT}",
            "-c max_connections=300",
        ]
        if self.fast:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "-o", " ".join(options), "start",
        )  # fmt: skip
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`immediate`: as if it crashed)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    @classmethod
    @contextlib.contextmanager
    def running(cls, fast: bool = True) -> Iterator["PgCluster"]:
        """A started server, removed on the way out (failed or not)."""
        cluster = cls(fast)
        try:
            yield cluster.start()
        finally:
            cluster.destroy()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}&port={PORT}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        name = f"{prefix}{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def sql(self, url: str, statement: str, params: tuple = ()) -> list[tuple]:
        """Run one statement in the database of `url`; its rows, if any."""
        with psycopg.connect(url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []
