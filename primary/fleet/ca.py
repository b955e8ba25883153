"""The fleet's certificate authority: its own CA, the server certificate, worker certificates.

Worker certificates are client-only (EKU clientAuth, CA:FALSE) and their subject is the
worker id the primary chose: nothing from the CSR but its public key is used.
"""

import datetime
import ipaddress
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=825)
# Clocks of workers may lag a little; a certificate valid from "now" would be refused there.
BACKDATE = datetime.timedelta(minutes=5)


class CsrError(ValueError):
    """The CSR cannot be used; the message says why."""


@dataclass(frozen=True)
class IssuedCertificate:
    pem: str
    serial: str  # hex, as the agent port's TLS layer reports it
    not_after: datetime.datetime


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def serial_hex(serial: int) -> str:
    return f"{serial:X}"


def create_ca() -> tuple[str, str]:
    """Return (certificate PEM, private key PEM) of a new self-signed fleet CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cifleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"cifleet fleet CA {secrets.token_hex(4)}"),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


class CertificateAuthority:
    def __init__(self, cert_pem: str, key_pem: str):
        self.cert_pem = cert_pem
        self._cert = x509.load_pem_x509_certificate(cert_pem.encode())
        self._key = serialization.load_pem_private_key(key_pem.encode(), password=None)

    def _builder(self, subject: x509.Name, public_key, lifetime: datetime.timedelta):
        now = _now()
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + lifetime)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def issue_server(self, hostnames: list[str]) -> tuple[str, str]:
        """Return (certificate PEM, key PEM) for the primary, with `hostnames` as SANs."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        for host in hostnames:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        cert = (
            self._builder(subject, key.public_key(), SERVER_LIFETIME)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(_leaf_key_usage(), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return _cert_pem(cert), _key_pem(key)

    def issue_worker(
        self, csr_pem: str, worker_id: str, lifetime: datetime.timedelta
    ) -> IssuedCertificate:
        """Sign a worker's CSR. Only its public key is used; subject and extensions are ours."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except (ValueError, TypeError):
            raise CsrError("csr is not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise CsrError("csr signature does not verify")
        public_key = csr.public_key()
        if isinstance(public_key, rsa.RSAPublicKey):
            if public_key.key_size < 2048:
                raise CsrError("csr RSA key is shorter than 2048 bits")
        elif not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise CsrError("csr key must be EC or RSA")
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cifleet workers"),
                x509.NameAttribute(NameOID.COMMON_NAME, worker_id),
            ]
        )
        cert = (
            self._builder(subject, public_key, lifetime)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(_leaf_key_usage(), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        return IssuedCertificate(
            pem=_cert_pem(cert),
            serial=serial_hex(cert.serial_number),
            not_after=cert.not_valid_after_utc,
        )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
