"""Connections to PostgreSQL, kept for reuse: a small pool of our own, not psycopg_pool.
When the server is down a request must be refused at once (503), not after a wait for a
background reconnect; and after one connection fails, the idle ones (dead too, most likely)
go with it."""

import select
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import pq


class PoolExhausted(Exception):
    pass


class ConnectionPool:
    """Up to `size` connections, made when needed and reused while they work."""

    def __init__(self, connect: Callable[[], psycopg.Connection], size: int, wait: float):
        self._connect = connect
        self._size = size
        self._wait = wait
        self._idle: list[psycopg.Connection] = []
        self._open = 0  # idle and lent out
        self._cond = threading.Condition()

    def get(self) -> psycopg.Connection:
        with self._cond:  # (closing a dead connection sends nothing: no wait under the lock)
            deadline = time.monotonic() + self._wait
            while not self._idle and self._open >= self._size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PoolExhausted(f"all {self._size} connections busy for {self._wait:g} s")
                self._cond.wait(left)
            while self._idle:
                conn = self._idle.pop()
                if _alive(conn):
                    return conn
                self._open -= 1
                conn.close()
            self._open += 1
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def put(self, conn: psycopg.Connection) -> None:
        healthy = (
            not conn.closed
            and not conn.broken
            and conn.info.transaction_status == pq.TransactionStatus.IDLE
        )
        if not healthy:
            conn.close()
        with self._cond:
            if healthy:
                self._idle.append(conn)
            else:
                self._open -= 1
            self._cond.notify()

    def discard_idle(self) -> None:
        """Close the idle connections: one failed, so the server restarted or went away."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()

    def close(self) -> None:
        self.discard_idle()


def _alive(conn: psycopg.Connection) -> bool:
    """Whether an idle connection still works, without a round trip: the server says
    nothing on an idle connection unless it is closing it (a restart, an admin's kill), so
    a socket with something to read, or an end, is one to drop."""
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.OperationalError):
        return False
    return not readable
