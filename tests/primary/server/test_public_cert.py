"""The operator's certificate for the public port (primary/server/public_cert.py): which
names it covers, what it refuses to load and why, and a reload that keeps the old one
when the new files cannot serve."""

import logging

import pytest
from certs import TestCA

from primary.server.public_cert import PublicCertError, PublicCertificate, name_matches


@pytest.mark.parametrize(
    ("pattern", "name", "covered"),
    [
        ("ci.example.test", "ci.example.test", True),
        ("ci.example.test", "CI.Example.Test.", True),
        ("ci.example.test", "other.example.test", False),
        ("*.example.test", "ci.example.test", True),
        ("*.example.test", "a.b.example.test", False),  # one label only
        ("*.example.test", "example.test", False),
        ("*.example.test", ".example.test", False),
        ("*.test", "example.test", False),  # no wildcard over a whole top-level domain
        ("ci.example.test", "", False),
    ],
)
def test_a_name_is_covered_as_rfc_6125_says(pattern, name, covered):
    assert name_matches(pattern, name) is covered


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "operator")


def test_it_loads_a_chain_and_its_key_and_knows_its_names(ca):
    chain, key, _ = ca.issue("ui", ["ci.example.test", "*.ui.example.test"])
    assert PublicCertificate(chain, key).names == ("ci.example.test", "*.ui.example.test")


def test_files_that_cannot_serve_are_refused_with_the_file_and_the_reason(ca, tmp_path):
    chain, key, _ = ca.issue("ui", ["ci.example.test"])
    other_chain, other_key, _ = ca.issue("other", ["other.example.test"])
    no_names, no_names_key, _ = ca.issue("bare", [], ips=["127.0.0.1"])
    _, locked_key, _ = ca.issue("locked", ["ci.example.test"], passphrase=b"hunter2hunter2")
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (tmp_path / "missing.pem", key, f"cannot read {tmp_path / 'missing.pem'}: No such file"),
        (not_pem, key, f"{not_pem} holds no PEM certificate"),
        (no_names, no_names_key, f"{no_names} names no DNS name (subjectAltName)"),
        (chain, other_key, f"cannot use {other_key} with {chain}: KEY_VALUES_MISMATCH"),
        (chain, tmp_path / "missing.key", f"cannot use {tmp_path / 'missing.key'} with {chain}"),
        (chain, locked_key, f"{locked_key}: the key is encrypted"),
    ]
    for cert_path, key_path, message in cases:
        with pytest.raises(PublicCertError) as raised:
            PublicCertificate(cert_path, key_path)
        assert str(raised.value).startswith(message), (str(raised.value), message)
        assert "hunter2" not in str(raised.value)
    assert other_chain.exists()


def test_an_expired_certificate_is_served_with_a_warning(ca, caplog):
    chain, key, _ = ca.issue("old", ["ci.example.test"], days=-1)
    with caplog.at_level(logging.WARNING, logger="cifleet.primary"):
        PublicCertificate(chain, key)
    assert [r.getMessage().split(" expired at ")[0] for r in caplog.records] == [
        f"the public certificate {chain}"
    ]


def test_a_reload_takes_new_files_and_keeps_the_old_ones_when_they_cannot_serve(ca, caplog):
    chain, key, _ = ca.issue("ui", ["ci.example.test"])
    served = PublicCertificate(chain, key)
    ca.issue("ui", ["ci.example.test", "new.example.test"])  # renewed in place
    assert served.reload() is True
    assert served.names == ("ci.example.test", "new.example.test")
    key.write_text("not a key\n")
    with caplog.at_level(logging.ERROR, logger="cifleet.primary"):
        assert served.reload() is False
    assert served.names == ("ci.example.test", "new.example.test")
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith(
            f"public certificate not reloaded, the one before stays: cannot use {key} with {chain}"
        )
    )
