"""A certificate the operator supplies for the public port (`serve --public-cert FILE
--public-key FILE`: a company CA's, or ACME's), so browsers trust the web UI without being
told about the fleet CA.

It is chosen per connection, by the name the client asks for (TLS SNI): a client that asks
for one of its DNS names gets it; every other client (one that connects to an address,
which sends no name, or to another name) gets the fleet-CA certificate as before. So what
trusts `ca.pem` keeps working unchanged: the CLI and the built-in worker (which connect to
an address), agents that register through another name or with a CA file that holds both
CAs. The agent port is not touched: agents and the primary authenticate each other there
with the fleet CA alone.

SIGHUP reloads the files (a renewal replaces them); a reload that fails keeps the old
certificate, and says why in the log.
"""

import datetime
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cifleet.primary")


class PublicCertError(Exception):
    """The files cannot serve: the message names the file and what is wrong."""


def name_matches(pattern: str, server_name: str) -> bool:
    """Whether a certificate's DNS name covers the name a client asked for (RFC 6125: case
    does not matter; `*` stands for one whole leftmost label). Pure."""
    pattern, server_name = pattern.lower().rstrip("."), server_name.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == server_name
    label, _, rest = server_name.partition(".")
    return bool(label) and rest == pattern[2:] and "." in rest


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    names: tuple[str, ...]
    not_after: datetime.datetime


def _no_passphrase() -> bytes:
    raise PublicCertError("the key is encrypted; give the key without a passphrase")


def _load(cert_path: Path, key_path: Path) -> _Loaded:
    from cryptography import x509

    try:
        pem = cert_path.read_bytes()
    except OSError as exc:
        raise PublicCertError(f"cannot read {cert_path}: {exc.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        raise PublicCertError(f"{cert_path} holds no PEM certificate") from None
    try:
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    if not names:
        raise PublicCertError(
            f"{cert_path} names no DNS name (subjectAltName): no client could ask for it"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path), password=_no_passphrase)
    except PublicCertError as exc:
        raise PublicCertError(f"{key_path}: {exc}") from None
    except OSError as exc:  # ssl.SSLError is one: a key of another certificate, no key
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise PublicCertError(f"cannot use {key_path} with {cert_path}: {reason}") from None
    return _Loaded(context, names, leaf.not_valid_after_utc)


class PublicCertificate:
    """The operator's certificate and key files, loaded; `install` makes a fleet-CA server
    context hand connections that ask for its names over to it."""

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path, self.key_path = Path(cert_path), Path(key_path)
        self._loaded = _load(self.cert_path, self.key_path)
        self._warn_if_expired()

    @property
    def names(self) -> tuple[str, ...]:
        return self._loaded.names

    def install(self, fleet_context: ssl.SSLContext) -> None:
        fleet_context.sni_callback = self._choose

    def _choose(self, connection, server_name: str | None, _context) -> None:
        loaded = self._loaded  # one read: a reload may swap it meanwhile
        if server_name and any(name_matches(n, server_name) for n in loaded.names):
            connection.context = loaded.context

    def reload(self) -> bool:
        """Load the files again; on failure keep serving the certificate loaded before."""
        try:
            self._loaded = _load(self.cert_path, self.key_path)
        except PublicCertError as exc:
            log.error("public certificate not reloaded, the one before stays: %s", exc)
            return False
        log.info("public certificate reloaded: %s", ", ".join(self.names))
        self._warn_if_expired()
        return True

    def _warn_if_expired(self) -> None:
        if self._loaded.not_after <= datetime.datetime.now(datetime.UTC):
            log.warning(
                "the public certificate %s expired at %s; browsers will refuse it",
                self.cert_path,
                self._loaded.not_after.isoformat(),
            )
