"""LISTEN/NOTIFY between primaries (primary/store/pg_signals.py), on the session's real
PostgreSQL: what one publishes the others hear, never itself; a listener whose connection
the server ended listens again, and says that what was said meanwhile may be lost."""

import queue
import threading

import psycopg
import pytest
from fleet import wait_for

from primary.store.pg_signals import RESYNC, PgSignals, _payloads


@pytest.fixture
def pair(pg_url):
    stop = threading.Event()
    heard: list[queue.Queue] = [queue.Queue(), queue.Queue()]
    made = [
        PgSignals(
            lambda i=i: psycopg.connect(pg_url, autocommit=True, application_name=f"sig{i}"),
            lambda kind, arg, i=i: heard[i].put((kind, arg)),
            stop,
        ).start()
        for i in (0, 1)
    ]
    for signals in made:
        wait_for(signals.listening.is_set, 30, "LISTEN")
    yield made, heard
    for signals in made:
        signals.close()


def test_the_others_hear_what_one_publishes_and_it_does_not_hear_itself(pair):
    (one, two), (heard_one, heard_two) = pair
    one.publish("wake", "w-0123456789abcdef")
    one.publish("runs")
    one.publish("runs")  # queued once when still queued
    got = [heard_two.get(timeout=10)]
    got += [heard_two.get(timeout=10)] if got[0][0] == "wake" else []
    assert ("wake", "w-0123456789abcdef") in got
    two.publish("marker")
    assert heard_one.get(timeout=10) == ("marker", "")
    # one heard nothing of its own: the marker is the first thing in its queue
    assert heard_one.empty()


def test_a_listener_cut_off_by_the_server_listens_again(pair, pg_cluster, pg_url):
    (one, two), (_, heard_two) = pair
    ended = pg_cluster.sql(
        pg_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sig1'",
    )
    assert ended  # the listener's (and the idle publisher's) connection
    assert heard_two.get(timeout=30) == (RESYNC, "")
    wait_for(two.listening.is_set, 30, "LISTEN again")
    one.publish("after")
    assert heard_two.get(timeout=10) == ("after", "")


def test_payloads_fit_postgresqls_limit():
    signals = [f"wake w-{i:016x}" for i in range(1000)]
    payloads = _payloads("abcd1234", signals)
    assert all(len(p) <= 7000 for p in payloads) and len(payloads) > 1
    lines = [line for p in payloads for line in p.splitlines()]
    assert lines == [f"abcd1234 {s}" for s in signals]
