"""TCP keep-alives on a connection, and what the kernel knows of its peer (Linux's
TCP_INFO). A held long poll sends nothing for minutes: the keep-alive probes are how the
primary learns that the agent's host is still there, and how a dead peer's connection is
closed. The probes are set as the agent sets its own (agent.client.keep_alive)."""

import socket
import struct

from agent.client import KEEPALIVE_PROBES, keep_alive

__all__ = ["KEEPALIVE_PROBES", "keep_alive", "last_heard"]
_TCP_ESTABLISHED = 1
# struct tcp_info (linux/tcp.h): u8 tcpi_state at 0, u8 tcpi_probes (keep-alive probes
# sent and not answered) at 3, u32 tcpi_last_ack_recv (ms since the peer last acked) at 56.
_INFO_BYTES = 60


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
