"""An idle worker's host vanishes while the primary holds its poll (for minutes: the
agent says it waits that long). Nothing closes the connection; the primary's TCP keep-alive
probes go unanswered, so the worker turns inactive within the heartbeat timeout plus a
probe interval, not when the hold would have ended, and the dead connection is closed.

The host "vanishes" as a power cut would look from the primary: the agent is frozen and
nftables drops every packet its connections send (loopback, this test's own table)."""

import os
import signal
import subprocess
import time

import psutil
import pytest
from fault_fleet import HEARTBEAT
from fleet import wait_for

pytestmark = pytest.mark.faults

IDLE_HOLD = 300  # --idle-poll-hold, as the default
KEEPALIVE = max(1, int(HEARTBEAT / 6))  # the primary's probe interval (config.py)


def nft(*args: str) -> None:
    subprocess.run(["nft", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def drop_table():
    """An nftables table of this test's own, deleted at the end."""
    table = f"cifleet_test_{os.getpid()}"
    nft("add", "table", "inet", table)
    try:
        yield table
    finally:
        nft("delete", "table", "inet", table)


def held_polls(primary) -> float:
    for line in primary.client.request("GET", "/metrics")[2].decode().splitlines():
        if line.startswith("cifleet_polls_held "):
            return float(line.split()[1])
    raise AssertionError("no cifleet_polls_held on /metrics")


def agent_ports(pid: int, agent_port: int) -> list[int]:
    """The local ports of the agent's connections to the primary's agent port."""
    return sorted(
        c.laddr.port
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == agent_port and c.status == psutil.CONN_ESTABLISHED
    )


def test_an_idle_worker_whose_host_vanishes_turns_inactive_within_the_heartbeat_timeout(
    serve, fleet_of, drop_table
):
    primary = serve("--idle-poll-hold", str(IDLE_HOLD))
    fleet = fleet_of(primary)
    agent = fleet.add("vanishing")
    wait_for(lambda: held_polls(primary) == 1, 30, "the idle poll to be held")
    time.sleep(2 * HEARTBEAT)  # the hold outlasts the heartbeat timeout: still active
    assert primary.worker("vanishing")["state"] == "active"
    assert held_polls(primary) == 1

    os.kill(agent.proc.pid, signal.SIGSTOP)  # no new connection, nor any answer
    ports = agent_ports(agent.proc.pid, primary.agent_port)
    assert ports, "the agent holds no connection to the agent port"
    nft("add", "chain", "inet", drop_table, "out", "{ type filter hook output priority 0 ; }")
    nft(
        "add",
        "rule",
        "inet",
        drop_table,
        "out",
        "tcp",
        "sport",
        "{ " + ", ".join(map(str, ports)) + " }",
        "tcp",
        "dport",
        str(primary.agent_port),
        "drop",
    )
    cut_at = time.monotonic()
    wait_for(
        lambda: primary.worker("vanishing")["state"] == "inactive",
        IDLE_HOLD / 2,
        "the vanished worker to turn inactive",
    )
    took = time.monotonic() - cut_at
    # The heartbeat timeout, a probe interval, a contact refresh and a sweep; the hold
    # had over 100 s to go.
    assert took < HEARTBEAT + KEEPALIVE + HEARTBEAT / 4 + 4, took
    # After four unanswered probes the kernel ends the connection, and with it the hold.
    wait_for(lambda: held_polls(primary) == 0, 30, "the dead connection's hold to end")
    assert time.monotonic() - cut_at < IDLE_HOLD / 4
