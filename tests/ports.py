"""Ports for the servers the tests start, that nobody can take from under them.

A reservation is a socket bound to the port with SO_REUSEADDR that never listens. While it
is open the kernel gives the port to no one else: not to a bind() to port 0, not as the
local port of an outgoing connection, not to a bind() without SO_REUSEADDR. A server that
binds it with SO_REUSEADDR (cifleet-primary serve, sshd, Python's socketserver, PostgreSQL)
listens on it all the same, and again after a restart, so agents that know the port find
their restarted primary there. Connecting to a reserved port nobody listens on is refused.

Binding port 0, closing the socket and passing the number on is what this replaces: in
between anyone may take the port, and two calls in a row can even return the same number.
"""

import contextlib
import socket
from collections.abc import Sequence

ATTEMPTS = 50


class PortReservation:
    """One port number held on each of `addresses` (loopback addresses), until close()."""

    def __init__(self, addresses: Sequence[str] = ("127.0.0.1",)) -> None:
        self.addresses = tuple(addresses)
        for _ in range(ATTEMPTS):
            first = _hold(self.addresses[0], 0)
            port = first.getsockname()[1]
            held = [first]
            try:
                held += [_hold(address, port) for address in self.addresses[1:]]
            except OSError:  # taken on another address: try another number
                _close(held)
                continue
            self.port: int = port
            self._sockets = held
            return
        raise RuntimeError(f"no port free on all of {self.addresses} in {ATTEMPTS} tries")

    def close(self) -> None:
        _close(self._sockets)
        self._sockets = []

    def __enter__(self) -> "PortReservation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def reserve_port(*addresses: str) -> PortReservation:
    """A port held for a server a test starts (on 127.0.0.1 unless addresses are given)."""
    return PortReservation(addresses or ("127.0.0.1",))


def _hold(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def _close(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.close()
