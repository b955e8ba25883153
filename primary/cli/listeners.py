"""The primary's listening sockets. `serve` binds both before anything else starts and hands
them to the HTTP servers, so a port that cannot be bound ends `serve` at once, with nothing
half-started: a primary with only its public port up would serve the UI while no agent
can connect, and a process that stays up is never restarted by systemd.

Port 0 means any free port; `Listener.port` is the one the kernel chose.
"""

import socket
from dataclasses import dataclass


class ListenError(Exception):
    """A listening socket could not be made; the message names the address and the port's
    role."""


@dataclass(frozen=True)
class Listener:
    role: str  # "public" or "agent": which of serve's ports, for messages
    sock: socket.socket

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


def display_address(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets. Pure."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_listener(role: str, host: str, port: int, backlog: int) -> Listener:
    """A socket bound to (host, port) and listening. Each address `host` resolves to is tried
    in turn, as cheroot does; the first that binds is kept."""
    where = display_address(host, port)
    try:
        candidates = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where} ({role} port): {exc.strerror}") from exc
    problems = []
    for family, kind, proto, _, address in candidates:
        sock = socket.socket(family, kind, proto)
        try:
            if port != 0:
                # A restarted primary binds again at once, even with connections of the old
                # one in TIME_WAIT. Not for port 0: the kernel could then pick a port that
                # another socket holds with SO_REUSEADDR.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host in ("::", "::0"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too
            sock.bind(address)
            # Listening at once: from here on no other process can take the port.
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            problems.append(exc.strerror or str(exc))
            continue
        return Listener(role, sock)
    reason = "; ".join(dict.fromkeys(problems)) or "no address to bind"
    raise ListenError(f"cannot listen on {where} ({role} port): {reason}")


def bind_listeners(
    host: str, api_port: int, agent_port: int, agent_backlog: int, public_backlog: int
) -> tuple[Listener, Listener]:
    """Both of serve's listeners, or none: the public one is closed again when the agent
    port cannot be bound."""
    public = bind_listener("public", host, api_port, public_backlog)
    try:
        agent = bind_listener("agent", host, agent_port, agent_backlog)
    except ListenError:
        public.close()
        raise
    return public, agent
