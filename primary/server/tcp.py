"""TCP keep-alives on a connection, and what the kernel knows of its peer (Linux's
TCP_INFO). A held long poll sends nothing for minutes: the keep-alive probes are how the
primary learns that the agent's host is still there, and how a dead peer's connection is
closed."""

import socket
import struct

KEEPALIVE_PROBES = 3  # unanswered probes, one interval apart, before the kernel gives up
_TCP_ESTABLISHED = 1
# struct tcp_info (linux/tcp.h): u8 tcpi_state at 0, u8 tcpi_probes (keep-alive probes
# sent and not answered) at 3, u32 tcpi_last_ack_recv (ms since the peer last acked) at 56.
_INFO_BYTES = 60


def keep_alive(sock: socket.socket, interval: int) -> None:
    """Probe the peer after `interval` idle seconds, then every `interval`, and end the
    connection after KEEPALIVE_PROBES unanswered ones."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):  # Linux; elsewhere the system's defaults
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def last_heard(sock, now: float) -> float | None:
    """When the peer was last heard, as the kernel knows: `now` while it owes no answer to
    a keep-alive probe, else when it last acked anything; None when the connection is no
    longer established (closed, or the peer sent its FIN). Where TCP_INFO is missing,
    `now`: the connection is open, and its keep-alives close it when the peer is gone."""
    if not hasattr(socket, "TCP_INFO"):
        return now
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _INFO_BYTES)
    except OSError:  # closed meanwhile
        return None
    if len(info) < _INFO_BYTES or info[0] != _TCP_ESTABLISHED:
        return None
    if info[3] == 0:
        return now
    (last_ack_ms,) = struct.unpack_from("=I", info, 56)
    return now - last_ack_ms / 1000.0
