"""The bounded label values of what the HTTP servers report: which port, and why a
connection was refused or its TLS handshake failed. A value outside these sets is counted
as "other", so no client can grow the number of series.

`handshake_cause` names the cause of a failed handshake from the exception Python's ssl
module raised for it, so every server names causes the same way.
"""

import ssl

PORTS = ("public", "agent")

# Where a TLS handshake is: in one of its port's turns, or waiting for one.
HANDSHAKE_STATES = ("in_turn", "waiting")

# Why a listener closed a connection without serving it.
REFUSAL_CAUSES = (
    "connection_limit",  # the listener holds as many connections as it may
    "client_limit",  # the client's address holds as many as it may
    "read_deadline",  # the request (line, headers, body) did not arrive in time
    "too_large",  # the request line or headers were over the limit
    "body_memory",  # no room came in time for the request's body (--body-memory)
    "no_handshake_turn",  # its TLS hello came, but no handshake turn within the deadline
    "stopping",  # the primary is shutting down
    "other",
)

# Why a TLS handshake failed.
HANDSHAKE_CAUSES = (
    "timeout",  # it did not finish within the listener's deadline
    "no_client_certificate",  # agent port: the client sent no certificate
    "bad_client_certificate",  # the client's certificate did not verify (CA, dates, use)
    "server_certificate_refused",  # the client does not trust the primary's certificate
    "protocol",  # not TLS (plain HTTP, say), or no TLS version or cipher in common
    "closed",  # the client closed or reset the connection during the handshake
    "other",
)

OTHER = "other"

_NO_CERTIFICATE = {"PEER_DID_NOT_RETURN_A_CERTIFICATE"}
_BAD_CERTIFICATE = {"CERTIFICATE_VERIFY_FAILED"}
_PROTOCOL = {
    "HTTP_REQUEST",
    "HTTPS_PROXY_REQUEST",
    "WRONG_VERSION_NUMBER",
    "UNSUPPORTED_PROTOCOL",
    "UNKNOWN_PROTOCOL",
    "VERSION_TOO_LOW",
    "NO_PROTOCOLS_AVAILABLE",
    "NO_SHARED_CIPHER",
    "NO_CIPHERS_AVAILABLE",
    "WRONG_SSL_VERSION",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
}
_CLOSED = {"UNEXPECTED_EOF_WHILE_READING", "EOF"}


def bounded(value: str, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, else "other"."""
    return value if value in allowed else OTHER


def handshake_cause(exc: BaseException) -> str:
    """One of HANDSHAKE_CAUSES for the exception a server-side TLS handshake raised."""
    if isinstance(exc, TimeoutError):  # socket.timeout too
        return "timeout"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError | EOFError):
        return "closed"
    if not isinstance(exc, ssl.SSLError):
        return OTHER
    reason = getattr(exc, "reason", None) or ""  # unset on an SSLError made by hand
    if reason in _NO_CERTIFICATE:
        return "no_client_certificate"
    if reason in _BAD_CERTIFICATE:
        return "bad_client_certificate"
    # The client's alert about our certificate: unknown CA, bad, expired, unsupported.
    if reason == "TLSV1_ALERT_UNKNOWN_CA" or (
        reason.startswith("SSLV3_ALERT_") and "CERTIFICATE" in reason
    ):
        return "server_certificate_refused"
    if reason in _PROTOCOL:
        return "protocol"
    if reason in _CLOSED:
        return "closed"
    return OTHER
