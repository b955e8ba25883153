"""Registration and the agent home, against a fake primary on loopback TLS."""

import json
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ports import reserve_port

from agent import home as home_mod
from agent.cli import main
from agent.home import ConfigError, load_config
from agent.registration import RegistrationError, is_registered, read_secret, register


@pytest.fixture
def public(public_primary):
    return public_primary


@pytest.fixture
def files(pki, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.pem)
    secret = tmp_path / "secret"
    secret.write_text("  s3cret\n")
    return ca, secret


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def do_register(public, ca, home, **kw):
    args = dict(secret="s3cret", name="w1", tags=["linux", "big"], slots=3)
    args.update(kw)
    return register(public.url, ca, args["secret"], args["name"], args["tags"], args["slots"], home)


def test_register_writes_a_private_home(public, files, tmp_path, pki):
    ca, _ = files
    home = tmp_path / "agent-home"
    before = time.time()
    config = do_register(public, ca, home)
    # Renewal is due two thirds of the way from receipt to the certificate's expiry.
    cert = x509.load_pem_x509_certificate((home / "worker.crt").read_bytes())
    lifetime = cert.not_valid_after_utc.timestamp() - before
    assert before + lifetime * 0.66 < config.pop("renew_after") < time.time() + lifetime * 0.67
    assert config == {
        "worker_id": "w-1",
        "name": "w1",
        "tags": ["linux", "big"],
        "slots": 3,
        "primary_url": public.url,
        "agent_url": f"https://localhost:{public.port + 1}",
    }
    assert json.loads((home / "config.json").read_text()) == {
        **config,
        "renew_after": load_config(home)["renew_after"],
    }
    assert mode(home) == 0o700
    for name in ("worker.key", "worker.crt", "ca.pem", "config.json"):
        assert mode(home / name) == 0o600, name
    assert (home / "ca.pem").read_bytes() == pki.pem
    # the key never left: the request carried a CSR for it, and the certificate matches it
    sent = public.registrations[0]
    assert "PRIVATE" not in json.dumps(sent)
    assert sent["version"] and sent["slots"] == 3 and sent["tags"] == ["linux", "big"]
    key = serialization.load_pem_private_key((home / "worker.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((home / "worker.crt").read_bytes())
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
    assert is_registered(home) and load_config(home)["worker_id"] == config["worker_id"]
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


def test_registering_again_changes_nothing(public, files, tmp_path, capsys):
    ca, secret = files
    home = tmp_path / "h"
    do_register(public, ca, home)
    before = {p.name: p.read_bytes() for p in home.iterdir()}
    argv = [
        "register",
        "--primary",
        public.url,
        "--ca-file",
        str(ca),
        "--secret-file",
        str(secret),
        "--name",
        "other",
        "--home",
        str(home),
    ]
    assert main(argv) == 0
    assert "already registered as w1 (w-1); nothing changed" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in home.iterdir()} == before
    assert len(public.registrations) == 1


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (401, {"error": "bad secret", "code": "bad_secret"}),
            "the primary refused the worker secret",
        ),
        ((409, {"error": "taken", "code": "name_taken"}), "already has a worker named w1"),
        (
            (400, {"error": "tags[0] is not a valid name", "code": "bad_request"}),
            "tags[0] is not a valid name",
        ),
    ],
)
def test_refusals_leave_nothing_behind(public, files, tmp_path, answer, message):
    ca, _ = files
    public.register_answer = answer
    home = tmp_path / "h"
    with pytest.raises(RegistrationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        do_register(public, ca, home)
    assert not home.exists()


def test_wrong_secret_from_the_real_check(public, files, tmp_path):
    ca, _ = files
    with pytest.raises(RegistrationError, match="refused the worker secret"):
        do_register(public, ca, tmp_path / "h", secret="nope")


def test_a_primary_signed_by_another_ca_is_refused(public, tmp_path, other_ca_pem):
    other = tmp_path / "other-ca.pem"
    other.write_bytes(other_ca_pem)
    with pytest.raises(RegistrationError) as e:
        do_register(public, other, tmp_path / "h")
    assert str(e.value) == f"the primary's certificate is not signed by the CA in {other}"
    assert public.registrations == []


def test_unreachable_primary_names_the_url(files, tmp_path):
    ca, _ = files
    with reserve_port() as nobody:  # reserved, and nobody listens: connections are refused
        url = f"https://127.0.0.1:{nobody.port}"
        with pytest.raises(RegistrationError, match=f"cannot reach the primary at {url}"):
            register(url, ca, "s3cret", "w1", [], 1, tmp_path / "h")


def test_a_different_ca_in_the_answer_is_refused(public, files, tmp_path, other_ca_pem):
    ca, _ = files
    public.register_answer = (
        201,
        {
            "worker_id": "w-9",
            "certificate": "x",
            "ca_certificate": other_ca_pem.decode(),
            "agent_url": "https://localhost:1",
        },
    )
    with pytest.raises(RegistrationError, match="differs"):
        do_register(public, ca, tmp_path / "h")
    assert not (tmp_path / "h").exists()


def test_a_failed_write_leaves_no_half_registered_home(public, files, tmp_path, monkeypatch):
    ca, _ = files
    real = home_mod.write_atomic
    calls = []

    def failing(path, data, mode=0o600):
        calls.append(path.name)
        if path.name == "ca.pem":
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr("agent.registration.write_atomic", failing)
    home = tmp_path / "h"
    with pytest.raises(OSError):
        do_register(public, ca, home)
    assert calls == ["worker.key", "worker.crt", "ca.pem"]
    assert list(home.iterdir()) == []
    assert not is_registered(home)


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f"
    home_mod.write_atomic(target, b"old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        home_mod.write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_read_secret(tmp_path):
    f = tmp_path / "s"
    f.write_text("\n  abc \n")
    assert read_secret(f) == "abc"
    f.write_text(" \n")
    with pytest.raises(RegistrationError, match="is empty"):
        read_secret(f)
    with pytest.raises(RegistrationError, match="does not exist"):
        read_secret(tmp_path / "missing")


def test_load_config_explains_an_unregistered_home(tmp_path):
    with pytest.raises(ConfigError, match="not registered"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "problem", ["missing-secret", "empty-secret", "missing-ca", "empty-ca", "bad-secret"]
)
def test_cli_errors_are_one_line_exit_2_and_never_show_the_secret(
    public, files, tmp_path, capsys, problem
):
    ca, secret = files
    if problem == "missing-secret":
        secret = tmp_path / "nope"
    elif problem == "empty-secret":
        secret.write_text("\n")
    elif problem == "missing-ca":
        ca = tmp_path / "no-ca.pem"
    elif problem == "empty-ca":
        ca.write_text("")
    else:
        secret.write_text("wrong-secret-value")
    argv = [
        "register",
        "--primary",
        public.url,
        "--ca-file",
        str(ca),
        "--secret-file",
        str(secret),
        "--home",
        str(tmp_path / "h"),
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("cifleet-agent: error: ") and err.count("\n") == 1
    assert "Traceback" not in err
    assert "s3cret" not in err and "wrong-secret-value" not in err
    assert not (tmp_path / "h").exists()


def test_cli_register_defaults(public, files, tmp_path, capsys):
    ca, secret = files
    argv = [
        "register",
        "--primary",
        public.url,
        "--ca-file",
        str(ca),
        "--secret-file",
        str(secret),
        "--home",
        str(tmp_path / "h"),
    ]
    assert main(argv) == 0
    sent = public.registrations[0]
    assert sent["secret"] == "s3cret"  # whitespace stripped
    assert sent["name"] == socket.gethostname().split(".")[0]
    assert sent["slots"] == 1 and sent["tags"] == []
    assert "s3cret" not in capsys.readouterr().out


def test_cli_run_on_an_unregistered_home_exits_2(tmp_path, capsys):
    assert main(["run", "--home", str(tmp_path)]) == 2
    assert "not registered" in capsys.readouterr().err


def test_python_dash_m_agent(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "agent", "--version"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        check=True,
    )
    assert out.stdout.startswith("cifleet-agent ")
