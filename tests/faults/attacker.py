"""An outsider's attempts to stall a port, for the stall fault test and bench/stall_attack.py:
connections of one kind held open (and opened again when the primary closes them), and
request bodies dripped a byte at a time. Standard library only."""

import socket
import ssl
import threading
from collections.abc import Callable


class Attacker:
    """Threads that each keep `count` connections of one kind open against a port: a
    connection the primary closed is opened again at once, until stop()."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.opened = 0
        self.closed_by_primary = 0
        self._lock = threading.Lock()

    def hold(self, count: int, connect: Callable[[], socket.socket]) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._keep, args=(connect,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _keep(self, connect: Callable[[], socket.socket]) -> None:
        while not self._stop.is_set():
            try:
                sock = connect()
            except OSError:  # refused during the handshake
                with self._lock:
                    self.closed_by_primary += 1
                self._stop.wait(0.05)
                continue
            with self._lock:
                self.opened += 1
            try:
                sock.settimeout(0.5)
                while not self._stop.is_set():
                    try:
                        if not sock.recv(1024):
                            break  # the primary closed it
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                else:
                    continue
                with self._lock:
                    self.closed_by_primary += 1
            finally:
                sock.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def tcp(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def tls(port: int, source: str, context: ssl.SSLContext, then: bytes = b"") -> socket.socket:
    """A TLS connection from `source`, which sends `then` and nothing more."""
    raw = tcp(port, source)
    try:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        if then:
            sock.sendall(then)
    except OSError:
        raw.close()
        raise
    return sock


def drip(port: int, source: str, context: ssl.SSLContext, head: bytes, stop: threading.Event):
    """A request whose body comes a byte every 0.2 s (5 B/s, the bound is 200 B/s)."""
    sock = tls(port, source, context, head)
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            sock.sendall(b"x")
            if sock.recv(1024):  # an answer (408, 429): the primary is done with it
                break
        except TimeoutError:
            continue
        except OSError:
            break
    sock.close()
