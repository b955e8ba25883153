"""The public port with a certificate the operator supplies (`serve --public-cert
--public-key`): a browser that asks for its name gets it and trusts the UI through the
operator's CA, not the fleet's; what connects by address (the CLI, the tests' client)
still gets the fleet certificate; SIGHUP takes renewed files, and keeps the old ones when
the new cannot serve; files that cannot serve stop `serve` before it binds a port."""

import base64
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess

import pytest
from certs import TestCA
from chromium import CHROMIUM, CHROMIUM_ARGS
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fleet import BIN, init_primary, log_tail, wait_for
from ports import reserve_port

pytestmark = pytest.mark.e2e
NAME = "ci.example.test"


def served_cert(
    port: int, server_name: str | None, cafile, check_name: bool = True
) -> x509.Certificate:
    """The certificate the public port serves to a client that asks for `server_name`
    (None: no name, as a client that connects to an address), verified against `cafile`
    (and, with `check_name`, for that name)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = check_name and server_name is not None
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def spki_pin(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def operator_ca(tmp_path):
    return TestCA(tmp_path / "operator")


def test_the_ui_is_served_with_the_operators_certificate_to_those_who_ask_for_its_name(
    tmp_path, operator_ca, playwright_driver, sqlite_fleet_setup
):
    chain, key, cert = operator_ca.issue("ui", [NAME])
    primary = init_primary(
        tmp_path / "fleet",
        "--primary-worker-slots",
        "0",
        "--public-cert",
        str(chain),
        "--public-key",
        str(key),
        sqlite_setup=sqlite_fleet_setup,
    )
    try:
        primary.start()  # its client connects to 127.0.0.1 and trusts ca.pem only
        port = primary.api_port
        info = json.loads((primary.data_dir / "serve.json").read_text())
        assert info["public_names"] == [NAME]

        # Asked for by its name: the operator's certificate, trusted through their CA.
        assert served_cert(port, NAME, operator_ca.cert_path) == cert
        # Anyone else: the fleet certificate, as before.
        fleet = served_cert(port, None, primary.ca_file)
        assert fleet != cert
        assert served_cert(port, "other.example.test", primary.ca_file, False) == fleet
        with pytest.raises(ssl.SSLCertVerificationError):
            served_cert(port, "other.example.test", operator_ca.cert_path, False)
        # The CLI reaches the API by address, with ca.pem.
        listed = subprocess.run(
            [str(BIN / "cifleet-primary"), "worker", "list", "--data-dir", str(primary.data_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr

        # A browser that resolves the name to the primary and trusts exactly the
        # operator's key (as one that trusts the operator's CA would) opens the UI.
        browser = playwright_driver.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                *CHROMIUM_ARGS,
                f"--host-resolver-rules=MAP {NAME} 127.0.0.1",
                f"--ignore-certificate-errors-spki-list={spki_pin(cert)}",
            ],
        )
        try:
            page = browser.new_page()
            response = page.goto(f"https://{NAME}:{port}/login")
            assert response.status == 200
            assert response.security_details()["issuer"] == "Operator Test CA"
            assert response.security_details()["subjectName"] == NAME
            assert page.get_by_role("button", name="Log in").is_visible()
        finally:
            browser.close()

        # Renewed in place, with one more name; SIGHUP takes it.
        _, _, renewed = operator_ca.issue("ui", [NAME, "new.example.test"])
        os.kill(primary.proc.pid, signal.SIGHUP)
        wait_for(
            lambda: served_cert(port, NAME, operator_ca.cert_path) == renewed, 10, "the renewal"
        )
        assert served_cert(port, "new.example.test", operator_ca.cert_path) == renewed
        # Files that cannot serve: the certificate before stays, and the log says why.
        key.write_text("not a key\n")
        os.kill(primary.proc.pid, signal.SIGHUP)
        wait_for(
            lambda: "public certificate not reloaded" in primary.log_path.read_text(), 10, "log"
        )
        assert served_cert(port, NAME, operator_ca.cert_path) == renewed
        assert primary.proc.poll() is None, log_tail(primary.log_path)
    finally:
        primary.close()


def test_files_that_cannot_serve_stop_serve_before_it_binds_a_port(tmp_path, operator_ca):
    data = tmp_path / "data"
    init = [str(BIN / "cifleet-primary"), "init", "--data-dir", str(data)]
    subprocess.run(init, check=True, capture_output=True, timeout=60)
    chain, _, _ = operator_ca.issue("ui", [NAME])
    _, other_key, _ = operator_ca.issue("other", ["other.example.test"])
    with reserve_port() as api, reserve_port() as agent:
        ports = ["--api-port", str(api.port), "--agent-port", str(agent.port)]
    serve = [str(BIN / "cifleet-primary"), "serve", "--data-dir", str(data), *ports]
    for extra, message in [
        (
            ["--public-cert", str(chain), "--public-key", str(other_key)],
            f"cifleet-primary: cannot use {other_key} with {chain}: KEY_VALUES_MISMATCH\n",
        ),
        (
            ["--public-cert", str(chain)],
            "cifleet-primary serve: give --public-cert with --public-key\n",
        ),
    ]:
        result = subprocess.run([*serve, *extra], capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (2, message)
        assert not (data / "serve.json").exists()
        for port in (api.port, agent.port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
