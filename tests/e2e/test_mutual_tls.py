"""The agent port admits only certificates the primary issued to workers it still knows;
registration admits only the worker secret."""

import datetime
import json
import sqlite3
import ssl
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fleet import BIN, AgentPeer, register_agent

from primary.fleet.ca import CertificateAuthority, create_ca


def test_registered_worker_is_admitted(primary, fleet_root):
    assert register_agent(primary, fleet_root, "w1").returncode == 0
    home = fleet_root / "w1"
    status, body = AgentPeer.of_home(primary, home).poll()
    assert status == 200
    assert body == {
        "assignments": [],
        "cancel": [],
        "delete_workspaces": [],
        "slots": 1,
        "heartbeat_timeout": 6.0,
    }


def test_client_without_certificate_is_refused(primary):
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        AgentPeer(primary).poll()


def test_certificate_from_another_ca_is_refused(primary, fleet_root):
    other_ca = CertificateAuthority(*create_ca())
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w-intruder")]))
        .sign(key, hashes.SHA256())
    )
    issued = other_ca.issue_worker(
        csr.public_bytes(serialization.Encoding.PEM).decode(),
        "w-intruder",
        datetime.timedelta(days=1),
    )
    (fleet_root / "intruder.crt").write_text(issued.pem)
    (fleet_root / "intruder.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        AgentPeer(primary, fleet_root / "intruder.crt", fleet_root / "intruder.key").poll()


def test_certificate_of_a_worker_gone_from_the_store_is_refused(primary, fleet_root):
    assert register_agent(primary, fleet_root, "w1").returncode == 0
    home = fleet_root / "w1"
    cert, key = str(home / "worker.crt"), str(home / "worker.key")
    assert AgentPeer(primary, cert, key).poll()[0] == 200
    worker_id = json.loads((home / "config.json").read_text())["worker_id"]
    with sqlite3.connect(primary.data_dir / "cifleet.db") as db:
        assert db.execute("DELETE FROM workers WHERE id = ?", (worker_id,)).rowcount == 1
    status, body = AgentPeer(primary, cert, key).poll()
    assert status == 403 and body["code"] == "unknown_worker"


def test_registration_refuses_a_wrong_secret_and_writes_nothing(primary, fleet_root):
    result = register_agent(primary, fleet_root, "w1", secret="not-the-secret")
    assert result.returncode != 0
    assert "secret" in result.stderr.lower()
    assert "not-the-secret" not in result.stderr + result.stdout
    home = fleet_root / "w1"
    assert not home.exists() or list(home.iterdir()) == []
    assert primary.workers() == []


def test_register_twice_changes_nothing_and_names_are_unique(primary, fleet_root):
    first = register_agent(primary, fleet_root, "w1")
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in (fleet_root / "w1").iterdir() if p.is_file()}
    again = register_agent(primary, fleet_root, "w1")
    assert again.returncode == 0 and "already registered" in again.stdout + again.stderr
    after = {p.name: p.read_bytes() for p in (fleet_root / "w1").iterdir() if p.is_file()}
    assert before == after
    # Another home asking for the same name cannot take the record over.
    (fleet_root / "other").mkdir()
    taken = register_agent(primary, fleet_root / "other", "w1")
    assert taken.returncode != 0 and "w1" in taken.stderr
    # Nor with the name in another case, nor with a name in the form of its id: admin
    # lookups take an id or a name, and must never hit the real worker for an impostor.
    upper = register_agent(primary, fleet_root / "other", "W1")
    assert upper.returncode != 0 and "already has a worker named W1" in upper.stderr
    worker_id = primary.worker("w1")["id"]
    impostor = register_agent(primary, fleet_root / "other", worker_id)
    assert impostor.returncode != 0 and "must not look like a worker id" in impostor.stderr
    assert [w["name"] for w in primary.workers()] == ["w1"]
    # A path segment is the id first, else the name without regard to case.
    assert primary.client.json("GET", f"/api/v1/workers/{worker_id}")["name"] == "w1"
    assert primary.client.json("GET", "/api/v1/workers/W1")["id"] == worker_id


def test_worker_certificate_is_client_only_with_primary_chosen_subject(primary, fleet_root):
    assert register_agent(primary, fleet_root, "w1").returncode == 0
    home = fleet_root / "w1"
    cert = x509.load_pem_x509_certificate((home / "worker.crt").read_bytes())
    worker_id = json.loads((home / "config.json").read_text())["worker_id"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == worker_id
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert (home / "worker.key").stat().st_mode & 0o777 == 0o600


def test_secret_rotation_refuses_the_old_secret_and_keeps_workers(primary, start_agent, fleet_root):
    start_agent("steady")
    old = primary.secret()
    new = primary.client.json("POST", "/api/v1/worker-secret/rotate")["secret"]
    assert new != old and len(new) >= 22
    assert register_agent(primary, fleet_root, "late", secret=old).returncode != 0
    # The CLI sees the same vault, and rotates it for the running primary too.
    shown = subprocess.run(
        [str(BIN / "cifleet-primary"), "secret", "show", "--data-dir", str(primary.data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == new
    subprocess.run(
        [str(BIN / "cifleet-primary"), "secret", "rotate", "--data-dir", str(primary.data_dir)],
        capture_output=True,
        check=True,
    )
    newest = primary.secret()
    assert newest != new
    assert register_agent(primary, fleet_root, "late", secret=new).returncode != 0
    assert register_agent(primary, fleet_root, "late", secret=newest).returncode == 0
    # The worker registered before both rotations still runs pipelines.
    primary.pipeline("name: after\njobs:\n  - name: a\n    steps: ['echo still here']\n")
    run = primary.wait_run(primary.trigger("after"))
    assert run["state"] == "success" and run["worker_name"] == "steady"


def test_deleted_worker_is_refused_at_once_and_its_agent_stops(primary, start_agent):
    agent = start_agent("leaving")
    cert, key = str(agent.home / "worker.crt"), str(agent.home / "worker.key")
    answer = primary.client.json("DELETE", "/api/v1/workers/leaving")
    assert answer["deleted"] is True and answer["name"] == "leaving"
    status, body = AgentPeer(primary, cert, key).poll()
    assert status == 403 and body["code"] == "unknown_worker"
    assert primary.workers() == []
    # Its held poll was answered at once; the next one was refused, so the agent stopped.
    agent.proc.wait(timeout=15)
    assert agent.proc.returncode == 3
    # ... and wiped its identity, saying what it wiped.
    for name in ("worker.key", "worker.crt", "config.json"):
        assert not (agent.home / name).exists(), name
    assert "the primary removed this worker; wiped" in agent.log_path.read_text()


def test_a_csr_asking_for_a_ca_or_another_subject_gets_neither(primary):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "primary-admin")]))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    reply = primary.client.json(
        "POST",
        "/api/v1/workers/register",
        {
            "secret": primary.secret(),
            "name": "greedy",
            "tags": [],
            "slots": 1,
            "version": "0.1.0",
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
        },
    )
    cert = x509.load_pem_x509_certificate(reply["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == reply["worker_id"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]  # cannot serve TLS
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_failed_registrations_are_rate_limited_per_address(primary, fleet_root):
    from primary.cli.client import ApiFailure

    body = {
        "secret": "guess",
        "name": "guesser",
        "tags": [],
        "slots": 1,
        "version": "0.1.0",
        "csr": "x",
    }
    assert register_agent(primary, fleet_root, "taken").returncode == 0
    # Every refusal counts: guesses (401), garbage (400), and a taken name (409).
    refusals = [body] * 8 + [
        {**body, "slots": 0},
        {**body, "secret": primary.secret(), "name": "TAKEN"},
    ]
    for attempt in refusals:
        with pytest.raises(ApiFailure) as refused:
            primary.client.json("POST", "/api/v1/workers/register", attempt)
        assert refused.value.status in (400, 401, 409)
    status, headers, raw = primary.client.request(
        "POST",
        "/api/v1/workers/register",
        json.dumps({**body, "secret": primary.secret()}).encode(),
    )
    # Even the right secret waits now: the address used up its failures.
    assert status == 429 and json.loads(raw)["code"] == "rate_limited"
    assert 0 < int(headers["retry-after"]) <= 300
    assert [w["name"] for w in primary.workers()] == ["taken"]
