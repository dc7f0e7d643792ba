"""The lean HTTP/1.1 client against a real server on 127.0.0.1 that answers with raw bytes.

Each server below reads one request at a time (head + Content-Length body) and writes
whatever the test scripted, so the client meets the shapes real servers produce: lengths,
chunks, bodies ended by closing, informational answers, closed keep-alive connections,
silence, garbage.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pydantic import SecretStr

from connector import http11
from connector.config import StripeConfig
from connector.sink import StripeSink, _lean_client_fits

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nRequest-Id: req_1\r\n\r\n{}"

Handler = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]


class _Server:
    """Counts connections, keeps every request; ``handler`` answers (False: close)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        #: Set each time the server has closed a connection (its FIN is on the wire).
        self.closed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.origin = ""

    async def __aenter__(self) -> _Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.origin = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.handler(len(self.requests), request, writer):
                    return
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.closed.set()


def _answer(*chunks: bytes, keep_open: bool = True) -> Handler:
    async def handler(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        return keep_open

    return handler


def _client(origin: str, **kwargs: Any) -> http11.Client:
    options: dict[str, Any] = {"headers": {"X-Static": "s"}, "timeout": 5.0, "max_connections": 4}
    return http11.Client(origin, **{**options, **kwargs})


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def test_a_request_on_the_wire_and_keep_alive_reuse() -> None:
    async def test() -> None:
        async with _Server(_answer(OK)) as server:
            client = _client(server.origin)
            for _ in range(3):
                answer = await client.post("/v2/x?a=1", b'{"events": []}', {"Authorization": "B t"})
                assert (answer.status, answer.reason, answer.body) == (200, "OK", b"{}")
                assert answer.headers["request-id"] == "req_1"
            await client.aclose()
        assert server.connections == 1
        head, body = server.requests[0].split(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v2/x?a=1 HTTP/1.1"
        assert f"Host: {server.origin.removeprefix('http://')}".encode() in lines
        assert {b"X-Static: s", b"Authorization: B t", b"Content-Length: 14"} <= set(lines)
        assert body == b'{"events": []}'

    _run(test)


@pytest.mark.parametrize(
    ("raw", "body"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n3\r\nabc\r\n0\r\n\r\n",
            b"{}abc",
        ),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", b"next"),
    ],
    ids=["chunked", "informational-first"],
)
def test_bodies_in_chunks_and_after_an_informational_answer(raw: bytes, body: bytes) -> None:
    async def test() -> None:
        async with _Server(_answer(raw)) as server:
            client = _client(server.origin)
            assert (await client.post("/", b"x", {})).body == body
            assert (await client.post("/", b"x", {})).body == body
            await client.aclose()
        assert server.connections == 1

    _run(test)


def test_a_body_ended_by_closing_and_connection_close_are_not_reused() -> None:
    async def test() -> None:
        async with _Server(_answer(b"HTTP/1.1 200 OK\r\n\r\nuntil-eof", keep_open=False)) as eof:
            client = _client(eof.origin)
            assert (await client.post("/", b"", {})).body == b"until-eof"
            assert (await client.post("/", b"", {})).body == b"until-eof"
            await client.aclose()
        assert eof.connections == 2
        close = b"HTTP/1.1 503 Busy\r\nConnection: close\r\nContent-Length: 1\r\n\r\n!"
        async with _Server(_answer(close)) as closing:
            client = _client(closing.origin)
            first = await client.post("/", b"", {})
            assert (first.status, first.reason, first.body) == (503, "Busy", b"!")
            await client.post("/", b"", {})
            await client.aclose()
        assert closing.connections == 2

    _run(test)


def test_repeated_headers_are_joined_and_names_lowered() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 0\r\n\r\n"
    )

    async def test() -> None:
        async with _Server(_answer(raw)) as server:
            client = _client(server.origin)
            answer = await client.post("/", b"", {})
            await client.aclose()
        assert answer.status == 429
        assert answer.headers == {"retry-after": "3", "x-a": "1, 2", "content-length": "0"}

    _run(test)


def test_a_keep_alive_connection_the_server_closed_is_replaced_transparently() -> None:
    """The client says the reused connection was stale; the sink decides to send again
    (safe because Stripe deduplicates identifiers), so the caller sees two answers."""
    from connector.session import Session

    async def handler(n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        return n != 1  # the server drops the connection after the first answer

    async def test() -> None:
        async with _Server(handler) as server:
            config = StripeConfig(api_base=server.origin, meter_events_base=server.origin)
            sink = StripeSink(config, SecretStr("sk_test_x"), max_connections=2)
            session = Session(id="s", token="tok", expires_at=0.0)
            assert await sink.send_events([], session) == "req_1"
            await server.closed.wait()  # the server has closed the idle connection
            assert await sink.send_events([], session) == "req_1"
            await sink.aclose()
        assert server.connections == 2

    _run(test)


def test_the_client_leaves_resending_on_a_stale_connection_to_its_caller() -> None:
    async def handler(n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(OK)
        await writer.drain()
        return n != 1

    async def test() -> None:
        async with _Server(handler) as server:
            client = _client(server.origin)
            assert (await client.post("/", b"1", {})).status == 200
            await server.closed.wait()
            with pytest.raises(http11.StaleConnectionError):
                await client.post("/", b"2", {})
            assert (await client.post("/", b"3", {})).status == 200  # a fresh connection
            await client.aclose()
        assert server.connections == 2

    _run(test)


def test_silence_times_out_and_the_connection_is_dropped() -> None:
    async def silent(_n: int, _request: bytes, _writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def test() -> None:
        async with _Server(silent) as server:
            client = _client(server.origin, timeout=0.2)
            with pytest.raises(http11.HTTPTimeoutError) as caught:
                await client.post("/", b"", {})
            assert caught.value.phase == "ReadTimeout"
            with pytest.raises(http11.HTTPTimeoutError):
                await client.post("/", b"", {})
            await client.aclose()
        assert server.connections == 2  # a timed-out connection is never reused

    _run(test)


def test_garbage_a_mid_answer_close_and_a_refused_connection_are_connection_errors() -> None:
    async def test() -> None:
        async with _Server(_answer(b"SMTP ready\r\n\r\n")) as garbage:
            client = _client(garbage.origin)
            with pytest.raises(http11.HTTPConnectionError, match="invalid HTTP"):
                await client.post("/", b"", {})
            await client.aclose()
        cut = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}"
        async with _Server(_answer(cut, keep_open=False)) as cutting:
            client = _client(cutting.origin)
            with pytest.raises(http11.HTTPConnectionError, match="before a complete answer"):
                await client.post("/", b"", {})
            await client.aclose()
        origin = garbage.origin  # closed now: nothing listens there
        client = _client(origin)
        with pytest.raises(http11.HTTPConnectionError, match="ConnectionRefusedError"):
            await client.post("/", b"", {})

    _run(test)


def test_header_values_with_line_breaks_are_refused_before_sending() -> None:
    async def test() -> None:
        async with _Server(_answer(OK)) as server:
            client = _client(server.origin)
            with pytest.raises(http11.HTTPConnectionError, match="line break"):
                await client.post("/", b"", {"Authorization": "Bearer x\r\nX-Evil: 1"})
            await client.aclose()
        assert server.requests == []

    _run(test)


def test_concurrent_requests_share_at_most_max_connections() -> None:
    async def slow(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(OK)
        await writer.drain()
        return True

    async def test() -> None:
        async with _Server(slow) as server:
            client = _client(server.origin, max_connections=2)
            answers = await asyncio.gather(*(client.post("/", b"", {}) for _ in range(12)))
            await client.aclose()
        assert [a.status for a in answers] == [200] * 12
        assert server.most_open <= 2
        assert server.connections == 2

    _run(test)


def test_a_request_waiting_for_a_connection_gives_up_at_its_timeout() -> None:
    async def stuck(_n: int, _request: bytes, _writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async def test() -> None:
        async with _Server(stuck) as server:
            client = _client(server.origin, max_connections=1, timeout=0.2)
            outcomes = await asyncio.gather(
                client.post("/", b"", {}), client.post("/", b"", {}), return_exceptions=True
            )
            await client.aclose()
        phases = sorted(o.phase for o in outcomes if isinstance(o, http11.HTTPTimeoutError))
        assert phases == ["PoolTimeout", "ReadTimeout"]

    _run(test)


def test_one_timeout_bounds_waiting_for_a_connection_and_reading_together() -> None:
    """A request that waited most of its budget for a connection has only the rest to read."""
    timeout = 1.0

    async def slow(_n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.7 * timeout)  # each answer takes most of one budget
        writer.write(OK)
        await writer.drain()
        return True

    async def test() -> None:
        async with _Server(slow) as server:
            client = _client(server.origin, max_connections=1, timeout=timeout)
            first, second = await asyncio.gather(
                client.post("/", b"1", {}), client.post("/", b"2", {}), return_exceptions=True
            )
            await client.aclose()
        assert isinstance(first, http11.Response)
        assert first.status == 200
        # The second waited >= 0.7 s for the connection and would need >= 0.7 s more.
        assert isinstance(second, http11.HTTPTimeoutError), second
        assert second.phase == "ReadTimeout"

    _run(test)


def test_the_sink_uses_the_lean_client_unless_a_proxy_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    assert _lean_client_fits("https://meter-events.stripe.com/v2/billing/meter_event_stream")
    assert not _lean_client_fits("https://user:pw@meter-events.stripe.com/x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert not _lean_client_fits("https://meter-events.stripe.com/x")
    assert _lean_client_fits("http://127.0.0.1:12111/x")
    monkeypatch.setenv("ALL_PROXY", "http://proxy.internal:3128")
    assert not _lean_client_fits("http://127.0.0.1:12111/x")


def test_the_sink_translates_lean_answers_like_httpx_ones() -> None:
    from connector.errors import BackoffError, RejectedBatchError, SessionExpiredError
    from connector.session import Session

    def error(status: str, body: bytes, *headers: bytes) -> bytes:
        head = b"".join(h + b"\r\n" for h in headers)
        return b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n%s" % (
            status.encode(),
            head,
            len(body),
            body,
        )

    answers = {
        1: OK,
        2: error("400 Bad Request", b'{"error":{"code":"x","message":"bad!!"}}'),
        3: error("401 Unauthorized", b'{"error":{"type":"temporary_session_expired"}}'),
        4: error("429 Slow", b"", b"Retry-After: 2"),
    }

    async def handler(n: int, _request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(answers[n])
        await writer.drain()
        return True

    async def test() -> None:
        async with _Server(handler) as server:
            config = StripeConfig(api_base=server.origin, meter_events_base=server.origin)
            sink = StripeSink(config, SecretStr("sk_test_x"), max_connections=2)
            assert sink.lean
            session = Session(id="s", token="tok", expires_at=0.0)
            assert await sink.send_events([], session) == "req_1"
            with pytest.raises(RejectedBatchError, match="bad!!"):
                await sink.send_events([], session)
            with pytest.raises(SessionExpiredError):
                await sink.send_events([], session)
            with pytest.raises(BackoffError) as caught:
                await sink.send_events([], session)
            assert (caught.value.cause, caught.value.retry_after) == ("rate_limited", 2.0)
            await sink.aclose()
        assert b"Authorization: Bearer tok" in server.requests[0]

    _run(test)
