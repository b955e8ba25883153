"""Real processes for tests: a primary (`cifleet-primary serve`) and agents (`cifleet-agent`),
each started as a subprocess (the primary on loopback ports reserved for it: tests/ports.py),
stopped as a process group."""

import atexit
import contextlib
import functools
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from leftovers import ended_runs, hold_lock, kill_what_ended_runs_left
from ports import PortReservation, reserve_port

from primary.cli.client import AdminClient

BIN = Path(sys.executable).parent
BASETEMP_PREFIX = "cifleet-pytest-"
KEEP_BASETEMPS = 3
# The heartbeat timeout of most test primaries: an agent fences after 3 s without a renewal.
HEARTBEAT = 6.0


def use_passable_basetemp(config) -> None:
    """Agents run as root here, so their jobs run under uids of their own (agent/identity.py)
    and must pass through every folder above their workspaces, as on a real host
    (/var/lib/cifleet). pytest's own base folder is 0700, and every session resets it; so
    each session as root gets a base folder of its own under /tmp, passable (0711) and
    locked while the session runs. Older unlocked ones beyond the newest few are removed."""
    if os.geteuid() != 0 or config.option.basetemp is not None:
        return
    root = Path(tempfile.mkdtemp(prefix=BASETEMP_PREFIX))
    root.chmod(0o711)
    config._cifleet_basetemp_lock = hold_lock(root)  # held until the session ends
    for line in kill_what_ended_runs_left(str(root.parent / (BASETEMP_PREFIX + "*"))):
        print(f"killed, left by an earlier run that did not end: {line}", file=sys.stderr)
    config.option.basetemp = str(root / "t")
    global _passable_root
    _passable_root = root
    _prune_basetemps(root)


_passable_root: Path | None = None  # this session's base folder's parent, when it is ours


def _prune_basetemps(mine: Path) -> None:
    """Remove the folders of ended sessions, beyond the newest few (kept to look into)."""
    ended = ended_runs(str(mine.parent / (BASETEMP_PREFIX + "*")))
    ended.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for old in ended[KEEP_BASETEMPS - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def passable(path: Path) -> Path:
    """Let others pass through (o+x, not list) `path` and the 0700 folders pytest made above
    it in this session's base folder: jobs under their own uids reach workspaces below."""
    path = Path(path)
    if _passable_root is None or not path.is_relative_to(_passable_root):
        return path
    for folder in [path, *path.parents]:
        if folder == _passable_root:
            break
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod((mode & 0o7777) | 0o011)
    return path


def shared_file(path: Path) -> Path:
    """An empty file every job may append to (0666): jobs run under uids of their own and
    cannot create files in a test's folders, as on a real host they cannot in /var/lib."""
    path = Path(path)
    path.touch(exist_ok=True)
    path.chmod(0o666)
    return path


# Lines of a process's log quoted when it failed to start.
LOG_TAIL_LINES = 20


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_file_step(path: Path) -> str:
    """Shell that waits for `path` to exist: a test creates it when a job may go on, so the
    test, not the clock, decides what the job has done by when. Fails after two minutes, so
    a test that never creates it leaves no endless job. Its loop variable is its own, so a
    step may wait inside a loop of its own."""
    return f"for _waited in $(seq 1200); do [ -e {path} ] && break; sleep 0.1; done; [ -e {path} ]"


def process_gone(pid: int) -> bool:
    """Ended (a zombie nobody reaped yet counts as ended)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal the process group a process leads (it was started in a session of its own),
    wait for it, and SIGKILL the group if it does not end in time."""
    stop_processes([proc], sig, timeout)


def stop_processes(
    procs: list[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 20
) -> None:
    """stop_process for several at once: each group is signalled once (a second SIGTERM
    would be an agent's force stop), then all are waited for, so they stop side by side."""
    live = [proc for proc in procs if proc.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


@dataclass
class Primary:
    """A primary's data dir and its ports, reserved when first asked for and held until
    close(): it may be stopped and started again (agents know its ports), and a port it
    does not listen on refuses connections."""

    data_dir: Path
    serve_args: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    # The address both listeners bind (the server certificate names it); the ports are
    # reserved on it.
    host: str = "127.0.0.1"
    # The command that serves (another build of cifleet, say); env added to the process's.
    command: list[str] = field(default_factory=lambda: [str(BIN / "cifleet-primary")])
    env: dict = field(default_factory=dict)
    api_ports: PortReservation | None = None
    agent_ports: PortReservation | None = None

    @property
    def api_port(self) -> int:
        if self.api_ports is None:
            self.api_ports = reserve_port(self.host)
        return self.api_ports.port

    @property
    def agent_port(self) -> int:
        if self.agent_ports is None:
            self.agent_ports = reserve_port(self.host)
        return self.agent_ports.port

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.api_port}"

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

    def start(self, timeout: float = 30) -> None:
        """Start `serve` and return once it serves (serve.json names its pid) and answers
        /healthz. A primary that exits or does not come up is stopped (its process group)
        and the error quotes its log."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                *self.command,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--api-port",
                str(self.api_port),
                "--agent-port",
                str(self.agent_port),
                "--bind",
                self.host,
                *self.serve_args,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        log.close()
        try:
            wait_for(self._serving, timeout, "the primary to serve")
            self.client.wait_healthy(timeout)
        except BaseException as exc:
            self.stop()
            raise AssertionError(
                f"the primary did not come up ({exc}); {self.log_path}:\n{log_tail(self.log_path)}"
            ) from exc

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"cifleet-primary serve exited with {self.proc.returncode}")
        try:
            info = json.loads((self.data_dir / "serve.json").read_text())
        except (FileNotFoundError, ValueError):  # not yet, or still there from a crash
            return False
        if info["pid"] != self.proc.pid:
            return False
        assert (info["api_port"], info["agent_port"]) == (self.api_port, self.agent_port), info
        return True

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)

    def close(self) -> None:
        """Stop it, and give its ports back: it is not started again."""
        self.stop()
        for ports in (self.api_ports, self.agent_ports):
            if ports is not None:
                ports.close()

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


# An agent that cannot switch users, as one started by a plain user: it runs as nobody in a
# user namespace of its own, where only that one uid exists (and it still reads its files
# and the venv). Jobs share its identity (agent/identity.py, `shared`).
NOBODY = 65534
AS_NOBODY = ("unshare", "--user", f"--map-user={NOBODY}", f"--map-group={NOBODY}")


@dataclass
class Agent:
    name: str
    home: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # more `cifleet-agent run` arguments
    prefix: tuple[str, ...] = ()  # what runs it (AS_NOBODY), if anything

    def config(self) -> dict:
        return json.loads((self.home / "config.json").read_text())

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [*self.prefix, str(BIN / "cifleet-agent"), "run", "--home", str(self.home), *self.args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, **self.env},
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig)


def stop_agents(agents: list[Agent]) -> None:
    """SIGTERM every agent, then wait for them all: each drains beside the others."""
    stop_processes([agent.proc for agent in agents if agent.proc is not None])


def register_agent(
    primary: Primary,
    root: Path,
    name: str,
    tags: str = "",
    slots: int = 1,
    secret: str | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`cifleet-agent register` into root/name, with more of its flags in `args`."""
    secret_file = root / f"{name}.secret"
    secret_file.write_text(primary.secret() if secret is None else secret)
    secret_file.chmod(0o600)
    command = [
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
        *args,
    ]
    if tags:
        command += ["--tags", tags]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def init_primary(
    root: Path,
    *serve_args: str,
    store: str | None = None,
    host: str = "127.0.0.1",
    sqlite_setup: Callable[[Path], None] | None = None,
) -> Primary:
    """A primary's data dir under `root`, to serve on `host` (also named in its server
    certificate) at ports reserved there; its fleet in `store` (a PostgreSQL URL), or in
    SQLite by default (then made as by `sqlite_setup(data_dir)` too, if given)."""
    data_dir = root / "primary-data"
    if store:
        _run_init(data_dir, host, store)
    else:
        # A copy of a fleet made once per session by the same `init`: its CA, keys and
        # tokens are then the same in every SQLite test fleet, which no test compares
        # across fleets; it saves an `init` (most of a second) per test.
        shutil.copytree(sqlite_fleet_template(host, sqlite_setup), data_dir, symlinks=True)
    # The built-in worker's jobs run beside the test's other files, not in /var/lib.
    return Primary(
        data_dir=data_dir,
        serve_args=["--builtin-work-dir", str(root / "builtin-work"), *serve_args],
        log_path=root / "primary.log",
        host=host,
    )


def _run_init(data_dir: Path, host: str, store: str | None) -> None:
    names = [] if host == "127.0.0.1" else ["--hostname", host]
    subprocess.run(
        [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data_dir), *names]
        + (["--store", store] if store else []),
        check=True,
        capture_output=True,
        timeout=60,
    )


@functools.cache
def sqlite_fleet_template(host: str, setup: Callable[[Path], None] | None = None) -> Path:
    """A data dir made by `cifleet-primary init` for `host`, once per session (then passed
    to `setup(data_dir)`, if given, e.g. to create users); tests copy it, never change it."""
    if _passable_root is not None:
        folder = Path(tempfile.mkdtemp(prefix="fleet-template-", dir=_passable_root))
    else:
        folder = Path(tempfile.mkdtemp(prefix="cifleet-fleet-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    data_dir = folder / "primary-data"
    _run_init(data_dir, host, None)
    if setup is not None:
        setup(data_dir)
    return data_dir


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
            self.primary.host, self.primary.agent_port, context=self.context, timeout=30
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


def copy_identity(primary: Primary, home: Path, to: Path) -> AgentPeer:
    """What a thief takes from a worker host: its key and certificate, copied into `to`."""
    to.mkdir()
    for name in ("worker.key", "worker.crt"):
        shutil.copy2(home / name, to / name)
    return AgentPeer.of_home(primary, to)


def renew_with(peer: AgentPeer, key_dir: Path) -> tuple[int, dict]:
    """What a thief does: renew with the copied pair, keeping the new key and certificate
    in `key_dir`."""
    from agent import keys

    key = keys.new_key()
    status, body = peer.call("POST", "/agent/v1/renew", {"csr": keys.csr_pem(key, "thief")})
    if status == 200:
        (key_dir / "worker.key").write_bytes(keys.key_pem(key))
        (key_dir / "worker.crt").write_text(body["certificate"])
    return status, body


def put_in_conflict(primary: Primary, home: Path, copy: Path) -> str:
    """Put the worker of `home` (registered, its agent not running) in credentials conflict
    as a thief would: renew from a copy of its pair, then renew again from the original,
    which that renewal superseded. Returns the conflict's reason, as the API gives it."""
    assert renew_with(copy_identity(primary, home, copy), copy)[0] == 200
    status, body = renew_with(AgentPeer.of_home(primary, home), copy.parent / "never-written")
    assert (status, body.get("code")) == (403, "credentials_conflict"), body
    name = json.loads((home / "config.json").read_text())["name"]
    return primary.worker(name)["conflict"]["reason"]


# -- Faults: hosts that die, networks that stop, many agents at once (tests/faults). ---------


def kill_host(agent: Agent) -> None:
    """SIGKILL an agent and every process under it (its jobs), as a host crash would: nothing
    stops cleanly or reports anything. Everything is frozen first, so no job starts while
    the tree is being listed."""

    def freeze(procs: list) -> None:
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.suspend()

    try:
        root = psutil.Process(agent.proc.pid)
    except psutil.NoSuchProcess:
        return
    freeze([root])
    tree = [root]
    while True:
        try:
            found = [p for p in root.children(recursive=True) if p not in tree]
        except psutil.Error:
            found = []
        if not found:
            break
        freeze(found)
        tree += found
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    agent.proc.wait(10)
    psutil.wait_procs(tree, timeout=10)


def workspace_processes(root: Path) -> list[psutil.Process]:
    """Live job processes whose CIFLEET_WORKSPACE is under `root` (an agent home, or a
    test's whole fleet root): never another test's jobs, which run under its own root."""
    inside = str(root) + "/"
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get("CIFLEET_WORKSPACE", "").startswith(inside):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def job_processes(root: Path, run_id: int, attempt: int | None = None) -> list[psutil.Process]:
    """Live processes of a run's jobs run by agents under `root` (by their CIFLEET_* env:
    every fresh primary numbers its runs from 1, so the run id alone is not this test's)."""
    found = []
    for proc in workspace_processes(root):
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if env.get("CIFLEET_RUN_ID") == str(run_id) and (
                attempt is None or env.get("CIFLEET_RUN_ATTEMPT") == str(attempt)
            ):
                found.append(proc)
    return found


def kill_workspace_processes(root: Path) -> None:
    """SIGKILL the job processes under `root` that their agent left running (an agent
    stopped or killed alone ends nothing that runs in its jobs' own sessions)."""
    procs = workspace_processes(root)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def register_agents(
    primary: Primary, root: Path, names: list[str], slots: int = 1, parallel: int = 8
) -> list[Agent]:
    """Register many agents at once (each `cifleet-agent register` is its own process)."""
    secret = primary.secret()
    with ThreadPoolExecutor(parallel) as pool:
        results = list(
            pool.map(lambda n: register_agent(primary, root, n, "", slots, secret), names)
        )
    for name, result in zip(names, results, strict=True):
        assert result.returncode == 0, f"registering {name}: {result.stderr}"
    return [Agent(name=n, home=root / n, log_path=root / f"{n}.log") for n in names]


class TcpProxy:
    """A TCP forwarder from a free loopback port to `target_port`, for network faults.

    cut() blackholes both directions without closing anything: bytes already sent wait (as
    TCP would keep retransmitting them), new connections are accepted but lead nowhere, and
    no FIN or RST gets through. heal() lets everything flow again, late bytes included.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def cut_now(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        self._sockets.append(upstream)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        self._flowing.wait()  # not even a FIN crosses a cut
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def point_agent_at(agent: Agent, port: int) -> None:
    """Make the agent reach the primary's agent port through `port` (a proxy) instead: the
    server certificate names 127.0.0.1, so TLS still verifies."""
    config = agent.config()
    config["agent_url"] = f"https://127.0.0.1:{port}"
    (agent.home / "config.json").write_text(json.dumps(config, indent=2) + "\n")
