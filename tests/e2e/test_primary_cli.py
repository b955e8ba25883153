"""`cifleet-primary` commands: init, the built-in worker, the demo, a wrong vault key."""

import http.client
import json
import os
import re
import shutil
import ssl
import subprocess
import urllib.parse
from pathlib import Path

from fleet import BIN, init_primary, process_gone, wait_for
from ports import reserve_port


def _primary_cli(*args, env=None, timeout=120):
    return subprocess.run(
        [str(BIN / "cifleet-primary"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_init_creates_private_files_and_a_second_init_changes_nothing(tmp_path):
    data = tmp_path / "data"
    first = _primary_cli("init", "--data-dir", str(data), "--hostname", "ci.example")
    assert first.returncode == 0, first.stderr
    assert data.stat().st_mode & 0o777 == 0o700
    for name in ("vault.bin", "vault.key", "admin.token", "cifleet.db"):
        assert (data / name).stat().st_mode & 0o777 == 0o600, name
    snapshot = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    second = _primary_cli("init", "--data-dir", str(data))
    assert second.returncode == 0 and "already initialised" in second.stdout
    assert {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()} == snapshot
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((data / "server.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "ci.example" in sans.get_values_for_type(x509.DNSName)


def test_wrong_vault_key_fails_clearly_and_leaves_the_vault_alone(tmp_path):
    data = tmp_path / "data"
    assert _primary_cli("init", "--data-dir", str(data)).returncode == 0
    before = (data / "vault.bin").read_bytes()
    result = _primary_cli(
        "secret", "show", "--data-dir", str(data), env={"CIFLEET_VAULT_KEY": "00" * 32}
    )
    assert result.returncode == 2
    assert "wrong vault key" in result.stderr and "Traceback" not in result.stderr
    assert (data / "vault.bin").read_bytes() == before


def test_builtin_worker_runs_pipelines_without_remote_hosts(tmp_path):
    primary = init_primary(tmp_path, "--heartbeat-timeout", "6")
    try:
        primary.start()
        primary.pipeline("name: solo\njobs:\n  - name: a\n    steps: ['echo on the primary']\n")
        run = primary.wait_run(primary.trigger("solo"), timeout=60)
        assert run["state"] == "success" and run["worker_name"] == "primary"
        assert primary.job_log(run["id"], "a") == b"on the primary\n"
        # De-registered by an admin, it comes back with a new identity at the next start.
        old_id = run["worker_id"]
        primary.client.json("DELETE", "/api/v1/workers/primary")
        primary.stop()
        assert primary.proc.returncode == 0  # SIGTERM stops it cleanly
        primary.start()
        again = primary.wait_run(primary.trigger("solo"), timeout=60)
        assert again["state"] == "success" and again["worker_name"] == "primary"
        assert again["worker_id"] != old_id
    finally:
        primary.close()


def test_demo_command_runs_the_example_and_says_how_to_stop(tmp_path):
    data = tmp_path / "demo-data"
    with reserve_port() as api_ports, reserve_port() as agent_ports:
        api, agent = api_ports.port, agent_ports.port
        try:
            result = _primary_cli(
                "demo", "--data-dir", str(data), "--api-port", str(api), "--agent-port", str(agent)
            )
            assert result.returncode == 0, result.stdout + result.stderr
            out = result.stdout
            assert "=== job build\nhello from cifleet, building in" in out
            assert "packaged run 1\n" in out
            assert "run 1 finished: success" in out
            assert f"https://127.0.0.1:{api}/api/v1/status" in out
            assert f"cifleet-primary stop --data-dir {data}" in out
            # The web UI: its address, a login whose password is in a 0600 file (not in
            # the output), and how to trust the CA; the login works.
            password_file = data / "ui-admin-password"
            password = password_file.read_text().strip()
            assert password_file.stat().st_mode & 0o777 == 0o600 and password not in out
            assert f"web UI:         https://127.0.0.1:{api}/\n" in out
            assert f"log in:       name admin, password: cat {password_file}\n" in out
            assert f"-i {data / 'ca.pem'}" in out
            context = ssl.create_default_context(cafile=str(data / "ca.pem"))
            form = urllib.parse.urlencode({"name": "admin", "password": password})
            conn = http.client.HTTPSConnection("127.0.0.1", api, context=context, timeout=30)
            conn.request("GET", "/login")
            page = conn.getresponse()
            cookie = page.getheader("Set-Cookie").split(";")[0]
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode())[1]
            conn.request(
                "POST",
                "/login",
                form + f"&csrf_token={token}",
                {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie},
            )
            answer = conn.getresponse()
            answer.read()
            conn.close()
            assert (answer.status, answer.getheader("Location")) == (303, "/workers")
            if os.geteuid() == 0:
                # As root the built-in worker's jobs run outside the private data dir.
                worker_id = json.loads((data / "builtin-worker" / "config.json").read_text())
                work = Path("/var/lib/cifleet-builtin") / worker_id["worker_id"]
                assert f"hello from cifleet, building in {work}/" in out
        finally:
            pidfile = data / "primary.pid"
            pid = int(pidfile.read_text()) if pidfile.exists() else None
            stop = _primary_cli("stop", "--data-dir", str(data))
            if pid is not None:  # the demo's primary runs on alone: it must be gone
                wait_for(lambda: process_gone(pid), 30, "the demo's primary to stop")
            config = data / "builtin-worker" / "config.json"
            if config.exists():  # the demo's workspaces, left in /var/lib by design
                worker_id = json.loads(config.read_text())["worker_id"]
                shutil.rmtree(Path("/var/lib/cifleet-builtin") / worker_id, ignore_errors=True)
    assert stop.returncode == 0


def test_demo_stops_at_once_when_its_primary_cannot_listen(tmp_path):
    import socket

    data = tmp_path / "demo-data"
    with reserve_port() as api_ports, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        agent = taken.getsockname()[1]
        result = _primary_cli(
            "demo", "--data-dir", str(data), "--api-port", str(api_ports.port),
            "--agent-port", str(agent),
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"cannot listen on 127.0.0.1:{agent} (agent port)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (data / "primary.pid").exists()


def test_the_server_certificate_is_reissued_with_new_names(tmp_path):
    import socket
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    primary = init_primary(tmp_path, "--primary-worker-slots", "0")
    issued = _primary_cli(
        "server-cert", "--hostname", "ci.new.example", "--data-dir", str(primary.data_dir)
    )
    assert issued.returncode == 0 and "ci.new.example" in issued.stdout
    try:
        primary.start()
        context = ssl.create_default_context(cafile=str(primary.ca_file))
        with (
            socket.create_connection(("127.0.0.1", primary.api_port)) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
        sans = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "ci.new.example" in sans.get_values_for_type(x509.DNSName)
        assert served.public_bytes(Encoding.PEM) == (primary.data_dir / "server.pem").read_bytes()
    finally:
        primary.close()
