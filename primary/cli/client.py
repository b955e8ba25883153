"""A small admin API client over HTTPS (stdlib only), for the CLI demo and for tests."""

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


class ApiFailure(Exception):
    def __init__(self, status: int, body: dict | str):
        message = body.get("error") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


class AdminClient:
    def __init__(self, url: str, ca_file: Path, token: str | None, timeout: float = 30.0):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 443
        self.context = ssl.create_default_context(cafile=str(ca_file))
        self.token = token
        self.timeout = timeout
        # One keep-alive connection per thread: a handshake per request would cost more than
        # most requests do.
        self._local = threading.local()

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPSConnection(
                    self.host, self.port, context=self.context, timeout=self.timeout
                )
                self._local.conn = conn
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionError, ssl.SSLEOFError):
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle connection; the request never ran
                raise
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def json(
        self,
        method: str,
        path: str,
        payload=None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ):
        body = (
            raw
            if raw is not None
            else (json.dumps(payload).encode() if payload is not None else None)
        )
        status, _, data = self.request(method, path, body, content_type)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            decoded = data.decode(errors="replace")
        if status >= 400:
            raise ApiFailure(status, decoded)
        return decoded

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the primary at {self.host}:{self.port} did not come up")
            time.sleep(0.1)
