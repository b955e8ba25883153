"""Real git servers for the git-source tests: repositories in a folder, `git daemon`
(git://) on a reserved port, and `git http-backend` (smart HTTP) behind a small CGI server
with basic auth, so a token is needed and its use can be seen. Git over ssh uses the
test sshd (tests/sshd.py)."""

import base64
import contextlib
import hmac
import os
import shutil
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fleet import (
    Agent,
    Primary,
    init_primary,
    kill_workspace_processes,
    log_tail,
    register_agent,
    wait_for,
)
from ports import reserve_port

AUTHOR = {
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.com",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.com",
}
HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd or "/"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        **AUTHOR,
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"git {args}: {result.stderr}"
    return result.stdout.strip()


class Repos:
    """Bare repositories under `root` (what the servers serve), each with a working copy
    the tests commit in and push from."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def create(self, name: str) -> Path:
        """A new repository `name` (one made earlier under that name is replaced)."""
        bare = self.root / f"{name}.git"
        shutil.rmtree(bare, ignore_errors=True)
        shutil.rmtree(self.root / f"{name}.work", ignore_errors=True)
        git("init", "-q", "--bare", "-b", "main", str(bare))
        # Served repositories allow fetching any reachable commit by id, as GitHub does.
        git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
        git("config", "http.receivepack", "false", cwd=bare)
        work = self.root / f"{name}.work"
        git("init", "-q", "-b", "main", str(work))
        git("remote", "add", "origin", str(bare), cwd=work)
        return bare

    def commit(self, name: str, path: str, text: str, message: str, branch: str = "main") -> str:
        """Commit `text` at `path` on `branch` and push it; the new commit's id."""
        work = self.root / f"{name}.work"
        if branch != git("symbolic-ref", "--short", "HEAD", cwd=work):
            exists = git("branch", "--list", branch, cwd=work)
            git("checkout", "-q", *([] if exists else ["-b"]), branch, cwd=work)
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
        git("add", path, cwd=work)
        git("commit", "-q", "-m", message, cwd=work)
        git("push", "-q", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)

    def rewrite(self, name: str, message: str, branch: str = "main") -> str:
        """Amend the last commit of `branch` and force-push it: the branch's old commit is no
        longer on it."""
        work = self.root / f"{name}.work"
        git("checkout", "-q", branch, cwd=work)
        git("commit", "-q", "--amend", "-m", message, cwd=work)
        git("push", "-q", "--force", "origin", f"HEAD:refs/heads/{branch}", cwd=work)
        return git("rev-parse", "HEAD", cwd=work)

    def tag(self, name: str, tag: str, message: str) -> str:
        """An annotated tag at the working copy's HEAD, pushed; the tag object's id."""
        work = self.root / f"{name}.work"
        git("tag", "-a", tag, "-m", message, cwd=work)
        git("push", "-q", "origin", f"refs/tags/{tag}", cwd=work)
        return git("rev-parse", f"refs/tags/{tag}", cwd=work)

    def delete_branch(self, name: str, branch: str) -> None:
        git("push", "-q", "origin", f":refs/heads/{branch}", cwd=self.root / f"{name}.work")

    def head(self, name: str, ref: str = "refs/heads/main") -> str:
        return git("rev-parse", ref, cwd=self.root / f"{name}.git")


class GitDaemon:
    """`git daemon` serving every repository under `root` on 127.0.0.1 (a reserved port)."""

    def __init__(self, root: Path, log_path: Path) -> None:
        self.ports = reserve_port("127.0.0.1")
        self.port = self.ports.port
        self.log_path = log_path
        log = open(log_path, "ab")  # noqa: SIM115 - owned by the child process
        self.proc = subprocess.Popen(
            [
                "git", "daemon", "--reuseaddr", "--export-all", f"--base-path={root}",
                "--listen=127.0.0.1", f"--port={self.port}", "--informative-errors", str(root),
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            wait_for(self._listening, 15, "git daemon to listen")
        except BaseException:
            self.close()
            raise AssertionError(f"git daemon did not start:\n{log_tail(log_path)}") from None

    def _listening(self) -> bool:
        assert self.proc.poll() is None, f"git daemon exited:\n{log_tail(self.log_path)}"
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.ports.close()


class HttpGit:
    """Smart HTTP over TLS: git http-backend as CGI behind basic auth (`user`, `token`), with
    a self-signed certificate for 127.0.0.1 (`ca`: its PEM, what a source's `ca` gives).
    Records the Authorization headers it was sent."""

    def __init__(self, root: Path, user: str, token: str) -> None:
        self.root, self.user, self.token = root, user, token
        self.authorizations: list[str] = []
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._serve(self)

            def do_POST(self) -> None:
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        tls = root.parent / "http-git-tls"
        tls.mkdir(exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-keyout", str(tls / "key.pem"), "-out", str(tls / "cert.pem"),
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2"],
            check=True, capture_output=True,
        )  # fmt: skip
        self.ca = (tls / "cert.pem").read_text()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls / "cert.pem", tls / "key.pem")
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}.git"

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        given = h.headers.get("Authorization") or ""
        self.authorizations.append(given)
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        if not hmac.compare_digest(given.encode(), expected.encode()):
            self.refused += 1
            h.send_response(401)
            h.send_header("WWW-Authenticate", 'Basic realm="git"')
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        body = self._body(h)
        path, _, query = h.path.partition("?")
        env = {
            "PATH": os.environ["PATH"],
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": h.command,
            "CONTENT_TYPE": h.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": self.user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": h.headers.get("Git-Protocol") or "",
            "HTTP_CONTENT_ENCODING": h.headers.get("Content-Encoding") or "",
        }
        out = subprocess.run([HTTP_BACKEND], input=body, env=env, capture_output=True).stdout
        head, _, content = out.partition(b"\r\n\r\n")
        if not content and b"\n\n" in out:
            head, _, content = out.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode().splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        h.send_response(status)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(content)))
        h.end_headers()
        h.wfile.write(content)

    @staticmethod
    def _body(h: BaseHTTPRequestHandler) -> bytes:
        if (h.headers.get("Transfer-Encoding") or "").lower() == "chunked":
            data = b""
            while True:
                size = int(h.rfile.readline().strip(), 16)
                if size == 0:
                    h.rfile.readline()
                    return data
                data += h.rfile.read(size)
                h.rfile.readline()
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def fleet_with_builder(root: Path, store: str | None = None) -> Iterator[tuple[Primary, Agent]]:
    """A primary (on `store`, or SQLite) and one agent, `builder`, as root: its jobs run
    under the pipeline's own uid, as on a real worker."""
    primary = init_primary(
        root, "--heartbeat-timeout", "6", "--primary-worker-slots", "0", store=store
    )
    agent = None
    try:
        primary.start()
        result = register_agent(primary, root, "builder")
        assert result.returncode == 0, result.stderr
        agent = Agent(name="builder", home=root / "builder", log_path=root / "builder.log")
        agent.start()
        wait_for(lambda: (w := primary.worker("builder")) and w["state"] == "active", 30, "agent")
        yield primary, agent
    finally:
        if agent is not None:
            agent.stop()
            kill_workspace_processes(agent.home)
        primary.close()
