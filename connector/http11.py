"""A lean keep-alive HTTP/1.1 client for the one hot request: POSTing meter events.

Why not httpx here: for each request httpx and httpcore build URL, header and request
models, run h11's pure-Python parser and anyio cancel scopes, and scan their pool: about
1 ms of CPU per request, half of everything the connector spent at 100 events per
request (bench/results/profile.txt). This client writes one pre-built header block plus
the body and parses the answer with httptools (llhttp, in C; a runtime dependency of its
own), so a request costs tens of microseconds.

Scope, deliberately small: POST with a Content-Length body; answers delimited by
Content-Length, chunked encoding or the connection closing; keep-alive pooling; TLS with
httpx's trust settings; one timeout per request. No proxies, redirects, cookies or
compression: ``StripeSink`` keeps httpx for anything outside that (a proxy in the
environment, an injected test transport) and for the rare session request.

Errors are this module's own (``HTTPTimeoutError``, ``HTTPConnectionError``); the sink
translates them, once, into the connector's error family.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import NamedTuple
from urllib.parse import urlsplit

import httptools

#: Bytes that must never reach a header line (they would end it or split the request).
_FORBIDDEN_IN_HEADERS = ("\r", "\n", "\0")


class HTTPError(Exception):
    """A request did not get an answer: the caller decides whether to retry."""


class HTTPTimeoutError(HTTPError):
    """No complete answer within the timeout; ``phase`` says where it was waiting."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"{phase} timed out")
        #: ConnectTimeout, PoolTimeout or ReadTimeout (httpx's names, for familiar logs).
        self.phase = phase


class HTTPConnectionError(HTTPError):
    """The connection could not be made, broke, or the answer was not valid HTTP."""


class StaleConnectionError(HTTPConnectionError):
    """A kept-alive connection turned out closed by the server while idle: nothing came
    back, and most likely nothing was read. Whether to send again is the caller's call."""


class Response(NamedTuple):
    """A complete answer; header names are lower case, repeated headers joined by ', '."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self, pool: Client) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Answers completed on this connection (a reused one may have been closed by
        #: the server while idle: StaleConnectionError).
        self.served = 0
        self._waiter: asyncio.Future[Response] | None = None
        self._received = False
        self._reason = ""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._headers_done = False
        self._keep_alive = True

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection's state is unknown
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HTTPConnectionError(f"invalid HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._pool._forget(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._has_length():
            # A body delimited by the connection closing: this is its end.
            self._complete(keep_alive=False)
            return
        reason = f": {exc}" if exc else ""
        self._fail(HTTPConnectionError(f"connection closed before a complete answer{reason}"))

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}
        self._body = []
        self._headers_done = False

    def on_status(self, status: bytes) -> None:
        self._reason = status.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:  # 1xx: informational, the answer follows
            return
        self._complete(keep_alive=self._parser.should_keep_alive())

    # -- requests ----------------------------------------------------------------------

    def _has_length(self) -> bool:
        headers = self._headers
        return "content-length" in headers or "transfer-encoding" in headers

    def _complete(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._keep_alive = keep_alive
        self.served += 1
        waiter.set_result(
            Response(
                self._parser.get_status_code(),
                self._reason,
                self._headers,
                b"".join(self._body),
            )
        )

    def _fail(self, exc: HTTPError) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _on_timeout(self) -> None:
        self._fail(HTTPTimeoutError("ReadTimeout"))
        self.close()

    async def request(self, data: bytes, read_seconds: float) -> Response:
        """Send ``data`` (a whole request) and wait up to ``read_seconds`` for the answer."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        self._received = False
        self._keep_alive = True
        self.transport.write(data)
        timer = loop.call_later(read_seconds, self._on_timeout)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    @property
    def reusable(self) -> bool:
        """Open, idle and kept alive by the server."""
        return not self.closed and self._keep_alive and self._waiter is None

    @property
    def received_nothing(self) -> bool:
        """The last request got not a single byte back."""
        return not self._received

    def close(self) -> None:
        """Drop the connection now (abort: nothing buffered is worth sending)."""
        if self.transport is not None:
            self.transport.abort()
        if not self.closed:
            self.closed = True
            self._pool._forget(self)


class Client:
    """Pooled keep-alive connections to one origin (scheme, host, port).

    ``headers`` go on every request; at most ``max_connections`` are open at once (more
    concurrent requests wait for one, within their timeout).
    """

    def __init__(
        self,
        origin: str,
        *,
        headers: dict[str, str],
        timeout: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("credentials in the URL are not supported")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        netloc = parts.netloc
        self._timeout = timeout
        self._max = max_connections
        self._static = "".join(f"{name}: {_checked(value)}\r\n" for name, value in headers.items())
        self._host_line = f"Host: {netloc}\r\n"
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def post(
        self,
        target: str,
        body: bytes,
        headers: dict[str, str],
        *,
        deadline: float | None = None,
    ) -> Response:
        """POST ``body`` to ``target`` (a path) and return the answer, whatever its status.

        ``deadline`` (the event loop's clock; default: the client's timeout from now) bounds
        the whole request: waiting for a connection, connecting, sending and reading.
        HTTPTimeoutError or HTTPConnectionError when no complete answer came;
        StaleConnectionError when a reused connection had been closed by the server.
        """
        extra = "".join(f"{name}: {_checked(value)}\r\n" for name, value in headers.items())
        head = (
            f"POST {target} HTTP/1.1\r\n{self._host_line}{self._static}{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        data = head.encode("latin-1") + body
        loop = asyncio.get_running_loop()
        if deadline is None:
            deadline = loop.time() + self._timeout
        connection = await self._acquire(deadline)
        reused = connection.served > 0
        try:
            response = await connection.request(data, max(0.0, deadline - loop.time()))
        except HTTPConnectionError as exc:
            connection.close()
            if reused and connection.received_nothing:
                raise StaleConnectionError(f"kept-alive connection closed: {exc}") from exc
            raise
        except BaseException:
            connection.close()  # cancelled or timed out mid-answer: state unknown
            raise
        self._release(connection)
        return response

    async def _acquire(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise HTTPConnectionError("client closed")
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable:
                    return connection
            if loop.time() >= deadline:  # woken too late to be worth a connection
                raise HTTPTimeoutError("PoolTimeout")
            if self._open < self._max:
                return await self._connect(deadline)
            slot = loop.create_future()
            self._waiting.append(slot)
            try:
                await asyncio.wait_for(slot, max(0.0, deadline - loop.time()))
            except BaseException as exc:
                if slot in self._waiting:
                    self._waiting.remove(slot)
                else:
                    self._wake()  # this one was woken but leaves: pass the turn on
                if isinstance(exc, TimeoutError):
                    raise HTTPTimeoutError("PoolTimeout") from None
                raise

    async def _connect(self, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(self)
        self._open += 1
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                ),
                max(0.0, deadline - loop.time()),
            )
        except TimeoutError:
            self._forget_failed(connection)
            raise HTTPTimeoutError("ConnectTimeout") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            self._forget_failed(connection)
            raise HTTPConnectionError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self._forget_failed(connection)
            raise
        return connection

    def _forget_failed(self, connection: _Connection) -> None:
        if not connection.closed:
            connection.closed = True
            self._forget(connection)

    def _release(self, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            self._idle.append(connection)
            self._wake()
        else:
            connection.close()

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: its slot is free."""
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            slot = self._waiting.popleft()
            if not slot.done():
                slot.set_result(None)
                return

    async def aclose(self) -> None:
        """Close every connection; later requests fail with HTTPConnectionError."""
        self._closed = True
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()
        self._wake()


def _checked(value: str) -> str:
    if any(char in value for char in _FORBIDDEN_IN_HEADERS):
        raise HTTPConnectionError("a header value contains a line break or NUL")
    return value
