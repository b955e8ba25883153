"""The HTTPS client: keep-alive reuse, one retry after a server hang-up, abort."""

import socket
import threading

import pytest

from agent.client import KEEPALIVE_SECONDS, Client, TransportError, agent_context


@pytest.fixture
def client(agent_home, fake_primary):
    c = Client(fake_primary.url, agent_context(agent_home))
    yield c
    c.close()


def test_a_connection_closed_by_the_server_is_retried_once_on_a_fresh_one(client, fake_primary):
    poll = {"runs": [], "wait": False}
    assert client.post_json("/agent/v1/poll", poll).status == 200
    fake_primary.drop_connections()
    # Whether the hang-up reached the client before it sent or after, the request never
    # reached the server on the old connection, so it is sent once more on a new one.
    assert client.post_json("/agent/v1/poll", poll).status == 200
    assert len(fake_primary.polls) == 2
    assert fake_primary.accepted == 2


def test_the_connection_is_reused(client, fake_primary):
    poll = {"runs": [], "wait": False}
    for _ in range(3):
        client.post_json("/agent/v1/poll", poll)
    with fake_primary.lock:
        assert len(fake_primary.connections) == 1


def test_its_connection_probes_a_silent_primary_with_keep_alives(client, fake_primary):
    """An idle poll is held for minutes: the kernel's probes, not the read timeout, find a
    primary whose host has gone."""
    client.post_json("/agent/v1/poll", {"runs": [], "wait": False})
    sock = client._conn.sock
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == KEEPALIVE_SECONDS
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == KEEPALIVE_SECONDS


def held_poll(
    client: Client, fake_primary, polls_before: int = 0
) -> tuple[list[TransportError], threading.Thread]:
    """A long poll in a thread, held (300 s) by the fake primary: the errors it raises, and
    the thread. Returns once the poll was sent."""
    fake_primary.hold = 300.0  # far longer than any join waits
    errors: list[TransportError] = []

    def poll():
        try:
            client.post_json("/agent/v1/poll", {"runs": [], "wait": True})
        except TransportError as e:
            errors.append(e)

    thread = threading.Thread(target=poll)
    thread.start()
    # Sent: the client waits for the answer.
    fake_primary.wait_for(lambda: len(fake_primary.polls) > polls_before)
    return errors, thread


def test_abort_breaks_a_long_poll_without_retrying(client, fake_primary):
    errors, thread = held_poll(client, fake_primary)
    client.abort()
    thread.join(30)
    assert not thread.is_alive() and len(errors) == 1
    assert len(fake_primary.polls) == 1


def test_a_shut_client_sends_no_request_after_it_and_breaks_the_one_in_flight(client, fake_primary):
    """shut() between two polls (an abort() there finds no request to break) still keeps
    the next one from going out; shut() during a held poll breaks it, as abort() does."""
    assert client.post_json("/agent/v1/poll", {"runs": [], "wait": False}).status == 200
    client.close()  # between requests, as after a failed one: no connection at all
    client.shut()
    with pytest.raises(TransportError, match="shut"):
        client.post_json("/agent/v1/poll", {"runs": [], "wait": True})
    assert len(fake_primary.polls) == 1 and fake_primary.accepted == 1

    other = Client(fake_primary.url, client._context_source())
    errors, thread = held_poll(other, fake_primary, polls_before=1)
    other.shut()
    thread.join(30)
    assert not thread.is_alive() and len(errors) == 1
    assert len(fake_primary.polls) == 2
    other.close()


def test_without_a_client_certificate_the_agent_port_refuses(fake_primary, pki):
    import ssl

    ctx = ssl.create_default_context(cadata=pki.pem.decode())
    c = Client(fake_primary.url, ctx)
    with pytest.raises(TransportError):
        c.post_json("/agent/v1/poll", {"runs": [], "wait": False})
    assert fake_primary.polls == []


def test_an_abort_before_a_request_is_sent_refuses_it_when_asked(client, fake_primary):
    """An abort() between reading abort_count and sending (the agent making its poll's body
    while it is told to drain) finds no request to break: the request made with that count
    is refused instead of being held with what it said before. Without the count, a later
    request goes out as before."""
    assert client.post_json("/agent/v1/poll", {"runs": [], "wait": False}).status == 200
    before = client.abort_count
    client.abort()  # breaks the kept connection's socket; no request was in flight
    with pytest.raises(TransportError, match="aborted before it was sent"):
        client.post_json("/agent/v1/poll", {"runs": [], "wait": True}, unless_aborted_since=before)
    assert len(fake_primary.polls) == 1
    again = client.abort_count
    answer = client.post_json("/agent/v1/poll", {"runs": []}, unless_aborted_since=again)
    assert answer.status == 200
    assert len(fake_primary.polls) == 2
