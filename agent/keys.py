"""The worker's key pair and CSRs: made on the worker (the private key never leaves it),
and the checks on what the primary sends back. Used by registration and renewal.

cryptography is imported inside each function, so `cifleet-agent run` (which only needs it
to renew) does not pay for it in memory until then.
"""


def new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key, name: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    # The primary ignores the subject; the name only helps a human reading the CSR.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def der(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.DER)


def same_ca(ca_pem: str, expected_ders: list[bytes]) -> bool:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(ca_pem.encode())
    except ValueError:
        return False
    return bool(certs) and all(der(c) in expected_ders for c in certs)


def cert_matches_key(cert_pem: str, key) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)
