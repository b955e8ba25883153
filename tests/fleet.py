"""Real processes for tests: a primary (`cifleet-primary serve`) and agents (`cifleet-agent`),
each started as a subprocess on free loopback ports, stopped as a process group."""

import contextlib
import functools
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from primary.client import AdminClient

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@dataclass
class Primary:
    data_dir: Path
    api_port: int
    agent_port: int
    serve_args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @functools.cached_property
    def client(self) -> AdminClient:
        """One client (keep-alive) for the primary; it reconnects after a restart."""
        return AdminClient(self.url, self.ca_file, self.token)

    def secret(self) -> str:
        return self.client.json("GET", "/api/v1/worker-secret")["secret"]

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                str(BIN / "cifleet-primary"),
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--api-port",
                str(self.api_port),
                "--agent-port",
                str(self.agent_port),
                *self.serve_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        self.client.wait_healthy(30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop(self.proc, sig)

    def pipeline(self, yaml_text: str) -> dict:
        return self.client.json(
            "POST", "/api/v1/pipelines", raw=yaml_text.encode(), content_type="application/yaml"
        )

    def trigger(self, name: str) -> int:
        return self.client.json("POST", f"/api/v1/pipelines/{name}/runs")["id"]

    def run(self, run_id: int) -> dict:
        return self.client.json("GET", f"/api/v1/runs/{run_id}")

    def wait_run(
        self,
        run_id: int,
        timeout: float = 60,
        states=("success", "failed", "cancelled", "lost", "timed_out"),
    ) -> dict:
        return wait_for(
            lambda: (r := self.run(run_id))["state"] in states and r,
            timeout,
            f"run {run_id} to reach one of {states}",
            interval=0.1,
        )

    def job_log(self, run_id: int, job: str, offset: int = 0) -> bytes:
        status, _, body = self.client.request(
            "GET", f"/api/v1/runs/{run_id}/jobs/{job}/log?offset={offset}"
        )
        assert status == 200, body
        return body

    def workers(self) -> list[dict]:
        return self.client.json("GET", "/api/v1/workers")["workers"]

    def worker(self, name: str) -> dict | None:
        return next((w for w in self.workers() if w["name"] == name), None)


@dataclass
class Agent:
    name: str
    home: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)

    def config(self) -> dict:
        return json.loads((self.home / "config.json").read_text())

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [str(BIN / "cifleet-agent"), "run", "--home", str(self.home)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            _stop(self.proc, sig)


def register_agent(
    primary: Primary,
    root: Path,
    name: str,
    tags: str = "",
    slots: int = 1,
    secret: str | None = None,
) -> subprocess.CompletedProcess:
    secret_file = root / f"{name}.secret"
    secret_file.write_text(primary.secret() if secret is None else secret)
    secret_file.chmod(0o600)
    args = [
        str(BIN / "cifleet-agent"),
        "register",
        "--primary",
        primary.url,
        "--ca-file",
        str(primary.ca_file),
        "--secret-file",
        str(secret_file),
        "--name",
        name,
        "--slots",
        str(slots),
        "--home",
        str(root / name),
    ]
    if tags:
        args += ["--tags", tags]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def init_primary(root: Path, *serve_args: str) -> Primary:
    data_dir = root / "primary-data"
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return Primary(
        data_dir=data_dir,
        api_port=free_port(),
        agent_port=free_port(),
        serve_args=list(serve_args),
        log_path=root / "primary.log",
    )


class AgentPeer:
    """The agent protocol spoken by hand over mutual TLS, with a given certificate (or
    none): for tests of what the agent port accepts and refuses."""

    def __init__(self, primary: Primary, cert: Path | None = None, key: Path | None = None):
        self.primary = primary
        self.context = ssl.create_default_context(cafile=str(primary.ca_file))
        if cert is not None:
            self.context.load_cert_chain(str(cert), str(key))

    @classmethod
    def of_home(cls, primary: Primary, home: Path) -> "AgentPeer":
        return cls(primary, home / "worker.crt", home / "worker.key")

    def call(self, method: str, path: str, body: bytes | dict = b"") -> tuple[int, dict]:
        raw = json.dumps(body).encode() if isinstance(body, dict) else body
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.primary.agent_port, context=self.context, timeout=30
        )
        try:
            conn.request(method, path, body=raw, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            return response.status, json.loads(data) if data.startswith(b"{") else {}
        finally:
            conn.close()

    def poll(self) -> tuple[int, dict]:
        """A poll that does not wait; (status, answer)."""
        from agent import __version__

        return self.call(
            "POST",
            "/agent/v1/poll",
            {"wait": False, "runs": [], "version": __version__, "slots": 1},
        )

    def answer(self) -> dict:
        status, answer = self.poll()
        assert status == 200, answer
        return answer
