"""Fault injection: a primary with a short heartbeat timeout, and a fleet of agents that is
torn down whatever state a test left it in (killed, cut off, half restarted)."""

import pytest
from fault_fleet import HEARTBEAT, Fleet
from fleet import Primary, TcpProxy, init_primary


@pytest.fixture
def serve(fleet_root, store_url):
    """Start a primary with HEARTBEAT, no built-in worker, and the given extra serve flags
    (on the test's store engine: tests/conftest.py)."""
    primaries: list[Primary] = []

    def start(*extra: str) -> Primary:
        p = init_primary(
            fleet_root,
            "--heartbeat-timeout",
            str(HEARTBEAT),
            "--primary-worker-slots",
            "0",
            *extra,
            store=store_url,
        )
        primaries.append(p)  # closed even if it does not come up
        p.start()
        return p

    yield start
    for p in primaries:
        p.close()


@pytest.fixture
def fleet_of(serve, fleet_root):
    """A Fleet for a primary; torn down before the primaries (it depends on `serve`)."""
    fleets: list[Fleet] = []

    def make(primary: Primary) -> Fleet:
        fleets.append(Fleet(primary, fleet_root))
        return fleets[-1]

    yield make
    for fleet in fleets:
        fleet.teardown()


@pytest.fixture
def proxy_to():
    """TcpProxy(port) instances, closed after the test."""
    proxies: list[TcpProxy] = []

    def make(port: int) -> TcpProxy:
        proxies.append(TcpProxy(port))
        return proxies[-1]

    yield make
    for proxy in proxies:
        proxy.close()
