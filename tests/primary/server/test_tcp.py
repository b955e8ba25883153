"""What the kernel knows of a connection's peer (primary/server/tcp.py), on real loopback
sockets. A peer that stops answering is tested end to end in
tests/faults/test_idle_host_gone.py."""

import socket
import struct
import time

import pytest

from primary.server.tcp import KEEPALIVE_PROBES, keep_alive, last_heard


@pytest.fixture
def pair():
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    yield server, client
    server.close()
    client.close()


def test_keep_alive_probes_an_idle_peer_every_interval(pair):
    server, _ = pair
    keep_alive(server, 7)
    assert server.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7
    assert server.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == KEEPALIVE_PROBES


def test_a_peer_that_answers_its_probes_is_heard_now(pair):
    server, client = pair
    keep_alive(server, 1)
    client.sendall(b"x")
    server.recv(1)
    time.sleep(2.5)  # silent for over two probe intervals: the probes' answers count
    now = time.time()
    assert last_heard(server, now) == now
    # The kernel heard the peer within the last interval, though it sent nothing for 2.5 s:
    # what it acked were the probes (without them this is about 2,500 ms).
    info = server.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 60)
    assert struct.unpack_from("=I", info, 56)[0] < 1500


def test_a_peer_that_closed_or_a_closed_socket_is_not_heard(pair):
    server, client = pair
    client.close()
    deadline = time.monotonic() + 5
    while last_heard(server, time.time()) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert last_heard(server, time.time()) is None  # its FIN came: not established
    server.close()
    assert last_heard(server, time.time()) is None
