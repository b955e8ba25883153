"""The public port's WSGI app (Flask: admin API, registration, UI) served from aiohttp.

The app runs in a bounded pool of threads (`--public-threads`), as under any threaded WSGI
server, but no thread waits for a client's bytes: a body of up to BUFFERED_BODY bytes (every
JSON, form and pipeline definition) is read on the event loop, against the body deadline,
before a thread is taken. Only larger bodies (static file uploads) are read from a thread
while the app runs, and those have a small pool of their own, so slow uploads can hold up
other uploads but never a page or an API call.

The response goes the other way: each piece the app yields is written on the loop, with
back-pressure and the same deadline, so a client that stops reading is cut off rather than
holding a thread for good; a client that leaves ends its response (a live log stream's
generator is closed) without a traceback. A response whose Content-Length is at most
BUFFERED_RESPONSE bytes (every JSON answer and page) is joined in the thread and written by
the loop once the thread is done: two thread hops fewer per request than a write and an end
sent from the thread, each a wake-up of the loop and of the waiting thread.

The environ is PEP 3333's: PATH_INFO holds the path's bytes as sent, one latin-1 character
each (after percent-decoding), which is what the app's UTF-8 check expects.
"""

import asyncio
import concurrent.futures
import functools
import io
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from urllib.parse import unquote_to_bytes

from aiohttp import web

from primary.errors import ApiError
from primary.server import deferral
from primary.server.body import BodyBudget, BodyReader, BodyTimeout
from primary.server.bounds import Counts, ServerBounds
from primary.server.connections import peer_worker
from primary.server.deferral import Deferred
from primary.server.services import ServiceThreads
from primary.server.tcp import last_heard

log = logging.getLogger("cifleet.primary")
BUFFERED_BODY = 1 << 20
BUFFERED_RESPONSE = 1 << 16
UPLOAD_THREADS = 4
# Hop-by-hop headers are the server's to set (PEP 3333), whatever the app says.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


class _ThreadBody(io.RawIOBase):
    """wsgi.input for a body read while the app runs: each read waits for the loop."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class _Responder:
    """start_response and the writes of one response, called from the app's thread; the
    writing itself happens on the loop."""

    def __init__(self, request: web.BaseRequest, bounds: ServerBounds) -> None:
        self._request = request
        self._bounds = bounds
        self._loop = asyncio.get_running_loop()
        self._status = 500
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self.response: web.StreamResponse | None = None
        self.finished = False

    def start_response(self, status: str, headers: list, exc_info=None) -> Callable:
        if exc_info is not None and self.response is not None:
            raise exc_info[1].with_traceback(exc_info[2])
        code, _, reason = status.partition(" ")
        self._status, self._reason = int(code), reason
        self._headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
        return self.write

    @property
    def content_length(self) -> int | None:
        """The length the app declared for its body, if any."""
        for name, value in self._headers:
            if name.lower() == "content-length":
                return int(value) if value.isdigit() else None
        return None

    def write(self, data: bytes) -> None:
        self._on_loop(self._write(data))

    def finish(self) -> None:
        self._on_loop(self._finish())

    def _on_loop(self, coro) -> None:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            future.result()
        except concurrent.futures.CancelledError:  # the primary is stopping
            raise ConnectionAbortedError("the primary is stopping") from None

    async def _prepare(self) -> web.StreamResponse:
        if self.response is None:
            response = web.StreamResponse(status=self._status, reason=self._reason or None)
            for name, value in self._headers:
                response.headers.add(name, value)
            response.headers.setdefault("Server", "cifleet")
            self.response = response
            await response.prepare(self._request)
        return self.response

    async def _write(self, data: bytes) -> None:
        response = await self._prepare()
        wait = self._bounds.body_timeout + len(data) / self._bounds.body_min_rate
        try:
            await asyncio.wait_for(response.write(data), wait)
        except TimeoutError:
            raise BodyTimeout("the client reads too slowly") from None

    async def _finish(self) -> None:
        response = await self._prepare()
        await response.write_eof()
        self.finished = True

    async def send(self, body: bytes) -> None:
        """Write a body the thread joined, and end the response, on the loop."""
        try:
            if body:
                await self._write(body)
            await self._finish()
        except OSError:  # the client went away or read too slowly, as in _run_app
            pass


QUOTED_SLASH = re.compile(rb"%2F", re.IGNORECASE)


def decode_path(path: bytes) -> bytes:
    """The path percent-decoded, except an encoded slash, which stays `%2F` (as cheroot and
    mod_wsgi keep it): a name with a slash in it is one path segment, not two. Pure."""
    return b"%2F".join(unquote_to_bytes(part) for part in QUOTED_SLASH.split(path))


def build_environ(request: web.BaseRequest, body, server: tuple[str, int]) -> dict:
    """The WSGI environ of an aiohttp request (PEP 3333). Pure apart from reading the
    request."""
    target = request.raw_path.encode("utf-8", "surrogateescape")  # the bytes as sent
    path, _, query = target.partition(b"?")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": decode_path(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.version.major}.{request.version.minor}",
        "REMOTE_ADDR": peer[0] if peer else "",
        "REMOTE_PORT": str(peer[1]) if peer else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https",
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in request.raw_headers:
        name = raw_name.decode("latin-1").upper()
        if "_" in name:  # would pass for another header once '-' becomes '_'
            continue
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def client_certificate_environ(transport: asyncio.BaseTransport | None) -> dict:
    """mod_ssl's variables for the verified client certificate of a TLS transport, as
    cheroot set them: SSL_CLIENT_VERIFY, SSL_CLIENT_S_DN_CN, SSL_CLIENT_M_SERIAL (the hex
    form OpenSSL prints). The agent app's `require_worker` reads them."""
    if transport is None:
        return {"SSL_CLIENT_VERIFY": "NONE"}
    common_name, serial = peer_worker(transport)
    if common_name is None or serial is None:
        return {"SSL_CLIENT_VERIFY": "NONE"}
    return {
        "SSL_CLIENT_VERIFY": "SUCCESS",
        "SSL_CLIENT_S_DN_CN": common_name,
        "SSL_CLIENT_M_SERIAL": serial,
    }


class WSGIBridge:
    """An aiohttp request handler that serves `app` from a pool of `threads` threads.

    Bodies of up to `buffered_body` bytes are read on the loop before a thread is taken;
    larger ones are read by the app while it runs, from a pool of `streamed_threads` of
    their own. `certificates`: put the client certificate into the environ (agent port).
    `worker_requests`: requests of one worker (its certificate's CN, ServedConnection.worker)
    in progress at once; past it, 429 before the app runs. `deferrable`: a view may hand a
    waiting request back to be awaited on the loop (deferral.py). `refused(cause)` counts a
    request refused for a cause of metrics.causes.REFUSAL_CAUSES."""

    def __init__(
        self,
        app: WSGIApp,
        threads: int,
        bounds: ServerBounds,
        server: tuple[str, int],
        *,
        name: str = "public",
        buffered_body: int = BUFFERED_BODY,
        streamed_threads: int = UPLOAD_THREADS,
        certificates: bool = False,
        worker_requests: int | None = None,
        deferrable: bool = False,
        refused: Callable[[str], None] = lambda cause: None,
        body_memory: Callable[[int], None] = lambda held: None,
    ) -> None:
        self._app = app
        self._bounds = bounds
        self._server = server
        self._buffered_body = buffered_body
        self._body_budget = BodyBudget(bounds.body_memory, body_memory)
        self._certificates = certificates
        self._pool = ServiceThreads(threads, name)
        self._uploads = ServiceThreads(streamed_threads, f"{name}-body")
        self._worker_requests = Counts(worker_requests) if worker_requests else None
        self._refused = refused
        self._deferrable = deferrable
        self._name = name

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        protocol.request_began()
        worker = getattr(protocol, "worker", None)
        counted = self._worker_requests is not None and worker is not None
        try:
            if counted and not self._worker_requests.take(worker):
                self._refused("client_limit")
                return _refuse(
                    request,
                    429,
                    f"this worker has {self._worker_requests.limit} requests in progress",
                    close=False,
                )
            try:
                return await self._serve(request)
            finally:
                if counted:
                    self._worker_requests.give(worker)
        finally:
            protocol.request_ended()

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        received = time.monotonic()
        reader = BodyReader(
            request.content, self._bounds, on_timeout=lambda: self._refused("read_deadline")
        )
        length = request.content_length
        pool = self._pool
        held = 0
        if not request.body_exists:
            body = io.BytesIO()
        elif length is not None and length <= self._buffered_body:
            data = await self._read_whole(request, reader, length)
            if isinstance(data, web.StreamResponse):
                return data  # refused; its room, if it had any, is given back
            held = length
            body = io.BytesIO(data)
        else:
            body = io.BufferedReader(_ThreadBody(reader.read_in_thread()))
            pool = self._uploads
        responder = _Responder(request, self._bounds)
        environ = build_environ(request, body, self._server)
        if self._certificates:
            environ.update(client_certificate_environ(request.transport))
        deferred: list[Deferred] = []
        if self._deferrable:
            environ[deferral.ENVIRON_KEY] = deferred.append
            environ[deferral.RECEIVED_KEY] = received
            sock = request.transport.get_extra_info("socket") if request.transport else None
            if sock is not None:
                environ[deferral.PEER_HEARD_KEY] = functools.partial(last_heard, sock)
        try:
            try:
                joined = await pool.run(self._run_app, environ, responder, deferred)
            finally:
                if held:  # the app is done with the body
                    self._body_budget.give(held)
        except BodyTimeout as exc:  # the app let the body's deadline through
            if responder.response is None:
                return _refuse(request, 408, str(exc))
            request.protocol.force_close()
            return responder.response
        except Exception:  # a WSGI app should answer for itself; this one did not
            log.exception("%s port: the app failed", self._name)
            if responder.response is None:
                return _refuse(request, 500, "internal error; see the primary's log")
            request.protocol.force_close()
            return responder.response
        if deferred:
            return await self._finish_deferred(request, deferred[0])
        if joined is not None:
            await responder.send(joined)
        if responder.response is None:
            # The client left (or stopped reading) before anything was written: nothing
            # to answer. A handler that raised would get a traceback in aiohttp's log.
            request.protocol.force_close()
            return web.Response(status=499)
        if not responder.finished:
            request.protocol.force_close()  # its body was cut short: the connection ends
        return responder.response

    async def _read_whole(
        self, request: web.BaseRequest, reader: BodyReader, length: int
    ) -> bytes | web.StreamResponse:
        """A body of `length` bytes read into memory once the port's budget has room for it
        (the room stays taken: the caller gives it back when the app is done), or the answer
        that refuses it. However the read ends short, its room is given back here."""
        if not await self._body_budget.take(length, self._bounds.body_timeout):
            self._refused("body_memory")
            return _refuse(
                request,
                503,
                "the primary holds as many request bodies as it may; retry",
                close=False,
            )
        whole = False
        try:
            data = await reader.read(length)
            if len(data) < length:
                return _refuse(request, 400, "the body ended before its Content-Length")
            whole = True
            return data
        except BodyTimeout as exc:
            return _refuse(request, 408, str(exc))
        except ConnectionError:  # the client went away mid-body: nobody to answer
            request.protocol.force_close()
            return web.Response(status=499)
        finally:
            if not whole:  # also when the port stops (cancelled)
                self._body_budget.give(length)

    async def _finish_deferred(self, request: web.BaseRequest, deferred: Deferred) -> web.Response:
        """Wait for a deferred request's wake-up here, on the loop; its answer comes from a
        service thread, or without one when nothing woke it. A client that leaves ends the
        wait, and nothing is answered."""
        finished = False
        status, headers = 200, {}
        lost = request.protocol.lost()
        try:
            woken = await deferred.waiter.wait_async(deferred.seconds, until=lost)
            if lost.done():
                return web.Response(status=499)  # nobody to answer; released below
            answer = None if woken else deferred.unwoken()
            if answer is None:
                answer = await self._pool.run(deferred.finish)
            finished = True
        except ApiError as err:  # the store went away while it waited, say: as the app answers
            status, headers = err.status, err.headers
            answer = {"error": err.message, "code": err.code, **err.fields}
        except Exception:
            log.exception("unhandled error in a held request's answer")
            status, answer = (
                500,
                {"error": "internal error; see the primary's log", "code": "internal"},
            )
        finally:
            if not finished:
                deferred.release()
        return web.Response(
            status=status,
            body=json.dumps(answer, separators=(",", ":")).encode(),
            content_type="application/json",
            headers={**headers, "Server": "cifleet"},
        )

    def _run_app(self, environ: dict, responder: _Responder, deferred: list) -> bytes | None:
        """Run the app; a small body is returned whole for the loop to send (None: the app
        sent its response from here, or handed the request back)."""
        result = self._app(environ, responder.start_response)
        if deferred:  # the view handed the request back: its placeholder is not sent
            close = getattr(result, "close", None)
            if close is not None:
                close()
            return None
        length = responder.content_length
        if length is not None and length <= BUFFERED_RESPONSE:
            try:
                return b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        try:
            for data in result:
                if data:
                    responder.write(data)
            responder.finish()
        except OSError:  # the client went away or read too slowly: its response ends here
            pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return None

    def shutdown(self) -> None:
        self._pool.shutdown()
        self._uploads.shutdown()


REFUSAL_CODES = {
    400: "bad_request",
    408: "request_timeout",
    429: "too_many_requests",
    500: "internal",
    503: "busy",
}


def _refuse(
    request: web.BaseRequest, status: int, message: str, close: bool = True
) -> web.Response:
    """A plain JSON error before the app saw the request. The connection closes after it
    unless `close` is false (the rest of the body may still be on its way)."""
    headers = {"Server": "cifleet"}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    response = web.json_response(
        {"error": message, "code": REFUSAL_CODES[status]}, status=status, headers=headers
    )
    if close:
        response.force_close()
    return response
