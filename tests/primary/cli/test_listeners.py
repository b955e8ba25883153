"""serve's listening sockets (primary/cli/listeners.py), on real loopback sockets."""

import socket

import pytest
from ports import reserve_port

from primary.cli.listeners import ListenError, bind_listeners, display_address


def test_an_address_is_shown_with_an_ipv6_host_in_brackets():
    assert display_address("127.0.0.1", 8443) == "127.0.0.1:8443"
    assert display_address("::", 8444) == "[::]:8444"


def test_both_listeners_listen_on_the_ports_asked_for_or_any_free_one():
    with reserve_port() as api:
        public, agent = bind_listeners("127.0.0.1", api.port, 0, agent_backlog=16, public_backlog=5)
        try:
            assert public.port == api.port and agent.port not in (0, api.port)
            for listener in (public, agent):
                with socket.create_connection(("127.0.0.1", listener.port), timeout=10):
                    pass
        finally:
            public.close()
            agent.close()


def test_when_the_agent_port_cannot_be_bound_the_public_one_is_closed_again():
    with socket.create_server(("127.0.0.1", 0)) as taken, reserve_port() as api:
        busy = taken.getsockname()[1]
        with pytest.raises(ListenError) as refused:
            bind_listeners("127.0.0.1", api.port, busy, agent_backlog=16, public_backlog=5)
        assert str(refused.value) == (
            f"cannot listen on 127.0.0.1:{busy} (agent port): Address already in use"
        )
        # The port is reserved, so only the public listener could have listened there.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", api.port)) != 0
