"""handshake_cause names what went wrong in real TLS handshakes (Python's ssl module over
memory buffers, the server side configured as the agent port is), and every cause it
names is one of the bounded set."""

import ssl
from pathlib import Path

import pytest

from agent.keys import csr_pem, key_pem, new_key
from primary.fleet.ca import CertificateAuthority, create_ca
from primary.metrics.causes import HANDSHAKE_CAUSES, handshake_cause

LIFETIME_DAYS = 1


def _write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """The fleet CA with a server and a worker certificate, and a worker certificate of
    another CA."""
    import datetime

    root = tmp_path_factory.mktemp("pki")
    files = {}
    for name in ("fleet", "other"):
        cert_pem, ca_key = create_ca()
        ca = CertificateAuthority(cert_pem, ca_key)
        files[f"{name}_ca"] = _write(root / f"{name}-ca.pem", cert_pem)
        key = new_key()
        issued = ca.issue_worker(
            csr_pem(key, "w"), f"w-{name}", datetime.timedelta(days=LIFETIME_DAYS)
        )
        files[f"{name}_worker"] = _write(root / f"{name}-worker.pem", issued.pem)
        files[f"{name}_worker_key"] = _write(root / f"{name}-worker.key", key_pem(key))
        if name == "fleet":
            server_cert, server_key = ca.issue_server(["127.0.0.1"])
            files["server"] = _write(root / "server.pem", server_cert)
            files["server_key"] = _write(root / "server.key", server_key)
    return files


def server_context(pki, minimum=ssl.TLSVersion.TLSv1_2) -> ssl.SSLContext:
    """As the agent port: the primary's certificate, client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server"], pki["server_key"])
    context.load_verify_locations(pki["fleet_ca"])
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = minimum
    return context


def client_context(pki, ca="fleet_ca", cert=None, maximum=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki[ca]))
    if cert is not None:
        context.load_cert_chain(pki[cert], pki[f"{cert}_key"])
    if maximum is not None:
        context.maximum_version = maximum
    return context


def server_failure(server: ssl.SSLContext, client: ssl.SSLContext | bytes) -> BaseException:
    """What the server side's handshake raised. `client`: a TLS client, or raw bytes a
    non-TLS client sends and then closes."""
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    if isinstance(client, bytes):
        s_in.write(client)
        s_in.write_eof()
        return _step(s)
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    for _ in range(10):
        try:
            c.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the client gave up (its alert goes to the server below)
        s_in.write(c_out.read())
        failure = _step(s)
        if failure is not None:
            return failure
        c_in.write(s_out.read())
    raise AssertionError("the handshake did not fail")


def _step(s: ssl.SSLObject) -> BaseException | None:
    try:
        s.do_handshake()
        s.read(1)  # TLS 1.3: the client's certificate is checked after the server's finish
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except Exception as exc:
        return exc
    return None


def test_no_client_certificate(pki):
    failure = server_failure(server_context(pki), client_context(pki))
    assert handshake_cause(failure) == "no_client_certificate", failure


def test_a_certificate_of_another_ca(pki):
    failure = server_failure(server_context(pki), client_context(pki, cert="other_worker"))
    assert handshake_cause(failure) == "bad_client_certificate", failure


def test_a_client_that_does_not_trust_the_primary(pki):
    client = client_context(pki, ca="other_ca", cert="fleet_worker")
    failure = server_failure(server_context(pki), client)
    assert handshake_cause(failure) == "server_certificate_refused", failure


def test_plain_http_on_the_tls_port(pki):
    failure = server_failure(server_context(pki), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert handshake_cause(failure) == "protocol", failure


def test_no_tls_version_in_common(pki):
    client = client_context(pki, cert="fleet_worker", maximum=ssl.TLSVersion.TLSv1_2)
    failure = server_failure(server_context(pki, ssl.TLSVersion.TLSv1_3), client)
    assert handshake_cause(failure) == "protocol", failure


def test_a_client_that_goes_away_mid_handshake(pki):
    hello = ssl.MemoryBIO()
    client = client_context(pki, cert="fleet_worker").wrap_bio(
        ssl.MemoryBIO(), hello, server_hostname="127.0.0.1"
    )
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    half_a_hello = hello.read()[:40]
    failure = server_failure(server_context(pki), half_a_hello)
    assert handshake_cause(failure) == "closed", failure


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (TimeoutError("timed out"), "timeout"),
        (ConnectionResetError(104, "reset"), "closed"),
        (BrokenPipeError(32, "broken pipe"), "closed"),
        (ValueError("not a network error at all"), "other"),
        (ssl.SSLError(1, "[SSL: SOMETHING_NEW] something new"), "other"),
    ],
)
def test_other_exceptions(exc, cause):
    assert handshake_cause(exc) == cause


def test_every_cause_is_in_the_bounded_set(pki):
    names = {
        handshake_cause(server_failure(server_context(pki), client_context(pki))),
        handshake_cause(server_failure(server_context(pki), b"\x16\x03\x01garbage")),
        handshake_cause(OSError("anything")),
    }
    assert names <= set(HANDSHAKE_CAUSES)
