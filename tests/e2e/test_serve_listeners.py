"""`cifleet-primary serve` and its two ports: a port it cannot bind ends it at once, with a
message naming the address and nothing left running or written; port 0 means any free
port, and serve.json says which ones it got."""

import json
import socket
import ssl
import subprocess

import pytest
from fleet import BIN, stop_process, wait_for
from ports import reserve_port

from primary.cli.client import AdminClient


@pytest.fixture
def data_dir(tmp_path):
    data = tmp_path / "data"
    init = [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data)]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    return data


def serve_args(data_dir, api_port: int, agent_port: int, *extra: str) -> list[str]:
    return [
        str(BIN / "cifleet-primary"),
        "serve",
        "--data-dir",
        str(data_dir),
        "--api-port",
        str(api_port),
        "--agent-port",
        str(agent_port),
        *extra,
    ]


def serve_until_exit(data_dir, api_port: int, agent_port: int) -> subprocess.CompletedProcess:
    """serve, which must exit by itself (subprocess.run kills it if it does not in time)."""
    return subprocess.run(
        serve_args(data_dir, api_port, agent_port, "--primary-worker-slots", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("taken", ["public", "agent", "both the same"])
def test_serve_exits_naming_the_address_when_a_port_cannot_be_bound(data_dir, taken):
    with socket.create_server(("127.0.0.1", 0)) as other, reserve_port() as free:
        busy = other.getsockname()[1]
        api_port, agent_port, role, port = {
            "public": (busy, free.port, "public", busy),
            "agent": (free.port, busy, "agent", busy),
            # The case: the first listener binds, the second finds it taken.
            "both the same": (free.port, free.port, "agent", free.port),
        }[taken]
        result = serve_until_exit(data_dir, api_port, agent_port)
    assert result.returncode == 2
    assert result.stderr == (
        f"cifleet-primary: cannot listen on 127.0.0.1:{port} ({role} port): "
        "Address already in use\n"
    )
    # It stopped before anything started: no files that say a primary serves, no log of a
    # start, no built-in worker home.
    assert not (data_dir / "serve.json").exists()
    assert not (data_dir / "primary.pid").exists()
    assert not (data_dir / "builtin-worker").exists()


def test_serve_on_port_0_serves_on_the_ports_it_reports(data_dir):
    log_path = data_dir.parent / "primary.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            serve_args(data_dir, 0, 0, "--heartbeat-timeout", "6"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    info_file = data_dir / "serve.json"
    try:

        def served() -> dict | None:
            assert proc.poll() is None, log_path.read_text()
            if info_file.exists():
                return json.loads(info_file.read_text())
            return None

        info = wait_for(served, 30, "serve.json")
        assert info["pid"] == proc.pid
        api_port, agent_port = info["api_port"], info["agent_port"]
        assert 0 not in (api_port, agent_port) and api_port != agent_port
        assert info["api_url"] == f"https://127.0.0.1:{api_port}"

        ca = data_dir / "ca.pem"
        client = AdminClient(info["api_url"], ca, (data_dir / "admin.token").read_text().strip())
        assert client.request("GET", "/healthz")[0] == 200
        # The other port is the agents' one: it accepts connections, but mutual TLS wants
        # a client certificate.
        context = ssl.create_default_context(cafile=str(ca))
        raw = socket.create_connection(("127.0.0.1", agent_port), timeout=30)
        with (
            raw,
            pytest.raises((ssl.SSLError, ConnectionResetError)),
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /agent/v1/poll HTTP/1.1\r\nHost: x\r\n\r\n")
            tls.recv(1)
        # The built-in worker registered through the public port and polls the agent port
        # the registration answer named: both are the ports bound.
        wait_for(
            lambda: any(
                w["name"] == "primary" and w["state"] == "active"
                for w in client.json("GET", "/api/v1/workers")["workers"]
            ),
            30,
            "the built-in worker to be active",
        )
        config = json.loads((data_dir / "builtin-worker" / "config.json").read_text())
        assert config["agent_url"] == f"https://127.0.0.1:{agent_port}"
        # The CLI finds the primary through serve.json.
        listing = subprocess.run(
            [str(BIN / "cifleet-primary"), "worker", "list", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listing.returncode == 0 and listing.stdout.startswith("primary  active")

        stop_process(proc)
        assert proc.returncode == 0
        assert not info_file.exists() and not (data_dir / "primary.pid").exists()
    finally:
        stop_process(proc)
