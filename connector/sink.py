"""The only module that speaks HTTP to the meter event stream and knows its status codes.

Two layers, as in httpx: a ``Transport`` moves bytes (the lean HTTP/1.1 client of
``connector.http11`` on the hot path, or httpx for proxies, injected test transports and
the rare session request) and maps its own failures once, into ``BackoffError`` (timeout,
connection); ``translate_response`` then reads Stripe's answer, whoever carried it, into
the ``StripeError`` family of ``connector.errors``. Everything above this module decides by
exception type alone (docs/stripe.md):

    200                              -> success
    429, 5xx, 408, 409, timeouts,    -> BackoffError (an outage: retry, never dead-letter)
      connection errors
    401/400 temporary_session_expired -> SessionExpiredError (renew, resend)
    401, 403, 404, 405 otherwise      -> AuthenticationError (configuration: not ready)
    other 4xx                         -> RejectedBatchError (the data: split, dead-letter)

A request the transport never got onto the wire (a kept-alive connection the server had
closed while idle) is sent again at once, within the same timeout: that replay is the
sink's decision, safe only because Stripe deduplicates event identifiers (and a session
request at worst makes one unused session).

Secrets never leave this module in a message: the API key and session tokens are only ever
placed in the Authorization header.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import math
import time
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlsplit

import httpx
import orjson
from pydantic import SecretStr

from connector import __version__, http11
from connector.config import StripeConfig
from connector.errors import (
    AuthenticationError,
    BackoffError,
    RejectedBatchError,
    SessionExpiredError,
    StripeError,
)
from connector.mapping import MeterEventBody
from connector.session import Session

SESSION_PATH = "/v2/billing/meter_event_session"
STREAM_PATH = "/v2/billing/meter_event_stream"
#: The header that runs a request on a connected account (docs/stripe.md).
STRIPE_CONTEXT = "Stripe-Context"
#: Connections per httpx pool (see StripeSink: small pools keep httpcore's scans short).
CONNECTIONS_PER_POOL = 4
#: httpx connections for session requests (one at a time, a few per hour).
SESSION_CONNECTIONS = 2
#: Status codes that mean "wait and try again" rather than "this data is bad".
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
#: Status codes that mean the key, its permissions or the base URL are wrong.
_CONFIG_4XX = frozenset({401, 403, 404, 405})
_EXPIRED_TYPE = "temporary_session_expired"
_EXPIRED_CODE = "billing_meter_event_session_expired"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, min(seconds, 3600.0))


def _error_fields(answer: Answer) -> tuple[str | None, str | None, str]:
    """(type, code, message) from a v1 or v2 Stripe error body; tolerant of anything."""
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        text = answer.body[:200].decode("utf-8", "replace").strip()
        return None, None, text or answer.reason or f"HTTP {answer.status}"
    kind = error.get("type")
    code = error.get("code")
    message = error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else f"HTTP {answer.status}",
    )


def translate_response(
    answer: Answer, *, session_endpoint: bool, account: str | None = None
) -> StripeError:
    """The StripeError for a non-200 answer (to a request for the connected ``account``)."""
    status = answer.status
    request_id = answer.headers.get("request-id")
    kind, code, message = _error_fields(answer)
    where = "creating a meter event session" if session_endpoint else "sending meter events"
    if account is not None:
        where += f" for connected account {account}"
    detail = f"HTTP {status} from Stripe {where}: {message}"
    if status == 429 or status >= 500 or status in _RETRYABLE_4XX:
        return BackoffError(
            detail,
            cause="rate_limited" if status == 429 else "server_error",
            retry_after=parse_retry_after(answer.headers.get("retry-after")),
            status=status,
            request_id=request_id,
        )
    if not session_endpoint and (kind == _EXPIRED_TYPE or code == _EXPIRED_CODE):
        return SessionExpiredError(detail, status=status, request_id=request_id)
    if status in _CONFIG_4XX:
        hint = {
            401: "check STRIPE_API_KEY" if session_endpoint else "the session token was refused",
            403: "the key lacks permission for billing meter events",
            404: "check stripe.api_base / stripe.meter_events_base",
            405: "check stripe.api_base / stripe.meter_events_base",
        }[status]
        return AuthenticationError(f"{detail} ({hint})", status=status, request_id=request_id)
    return RejectedBatchError(detail, code=code, status=status, request_id=request_id)


def encode_events(events: Sequence[MeterEventBody]) -> bytes:
    """The meter event stream's request body for one batch."""
    return orjson.dumps({"events": events})


def _parse_time(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise ValueError(f"not a timestamp: {value!r}")


def _lean_client_fits(url: str) -> bool:
    """Whether the lean client can carry requests to ``url`` exactly as httpx would.

    Not through a proxy (httpx honours HTTP(S)_PROXY/ALL_PROXY; the lean client does not)
    and not with credentials in the URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    if parts.username is not None or parts.password is not None:
        return False
    proxies = urllib.request.getproxies()
    return not (proxies.get(parts.scheme) or proxies.get("all"))


# -- transports ---------------------------------------------------------------------------


class Answer(NamedTuple):
    """An HTTP answer, whichever transport carried it; header names lower case."""

    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes


class UnsentError(BackoffError):
    """The request never reached the server (a kept-alive connection closed while idle)."""


class Transport(Protocol):
    """Carries one POST and maps its own failures to ``BackoffError`` (``UnsentError``
    when nothing was sent); ``deadline`` is on the event loop's clock."""

    async def post(
        self, url: str, content: bytes, headers: dict[str, str], *, deadline: float
    ) -> Answer:
        """POST ``content`` to ``url`` and return the answer, whatever its status."""
        ...

    async def aclose(self) -> None:
        """Close pooled connections."""
        ...


def _timed_out(timeout: float, phase: str) -> BackoffError:
    return BackoffError(f"timed out after {timeout:g} s calling Stripe ({phase})", cause="timeout")


class LeanTransport:
    """The hot path: ``connector.http11`` to one origin (no proxy, no credentials in URLs)."""

    def __init__(
        self, origin: str, *, headers: dict[str, str], timeout: float, max_connections: int
    ) -> None:
        self._timeout = timeout
        self._host = urlsplit(origin).hostname
        self._client = http11.Client(
            origin,
            headers={**headers, "Accept": "*/*", "Content-Type": "application/json"},
            timeout=timeout,
            max_connections=max_connections,
            # The same trust as httpx (certifi, or SSL_CERT_FILE / SSL_CERT_DIR).
            ssl_context=httpx.create_ssl_context() if origin.startswith("https:") else None,
        )

    async def post(
        self, url: str, content: bytes, headers: dict[str, str], *, deadline: float
    ) -> Answer:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            answer = await self._client.post(target, content, headers, deadline=deadline)
        except http11.HTTPTimeoutError as exc:
            raise _timed_out(self._timeout, exc.phase) from exc
        except http11.StaleConnectionError as exc:
            raise UnsentError(f"{self._host}: {exc}", cause="connection") from exc
        except http11.HTTPError as exc:
            raise BackoffError(
                f"cannot reach {self._host}: {type(exc).__name__}: {exc}", cause="connection"
            ) from exc
        return Answer(answer.status, answer.reason, answer.headers, answer.body)

    async def aclose(self) -> None:
        await self._client.aclose()


class HttpxTransport:
    """httpx, for proxies, injected test transports and session requests.

    Several small pools rather than one big one: httpcore's pool scans every connection and
    queued request on each state change, so its cost per request grows with the pool (a
    fifth of the connector's CPU at 32 connections). Requests go round-robin.
    """

    def __init__(
        self,
        *,
        headers: dict[str, str],
        timeout: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        shards = max(1, -(-max_connections // CONNECTIONS_PER_POOL)) if transport is None else 1
        per_pool = -(-max_connections // shards) + 1
        self._clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(timeout),
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                headers=headers,
                transport=transport,
            )
            for _ in range(shards)
        ]
        self._next = itertools.cycle(self._clients)

    async def post(
        self, url: str, content: bytes, headers: dict[str, str], *, deadline: float
    ) -> Answer:
        try:
            # httpx's timeout is per phase (pool, connect, write, read): the deadline bounds
            # the whole attempt, as stripe.request_timeout_seconds promises.
            async with asyncio.timeout_at(deadline):
                response = await next(self._next).post(
                    url, content=content, headers={"Content-Type": "application/json", **headers}
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise _timed_out(self._timeout, type(exc).__name__) from exc
        except httpx.TransportError as exc:
            raise BackoffError(
                f"cannot reach {httpx.URL(url).host}: {type(exc).__name__}: {exc}",
                cause="connection",
            ) from exc
        return Answer(
            response.status_code, response.reason_phrase, response.headers, response.content
        )

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()


# -- the sink -----------------------------------------------------------------------------


class StripeSink:
    """Both Stripe hosts through pooled connections, shared by every request of a process.

    Meter events, the hot path, go through ``LeanTransport`` (a fiftieth of httpx's CPU per
    request) unless a proxy, credentials in the URL or an injected transport need httpx;
    session requests, a few per hour, always use httpx.
    """

    def __init__(
        self,
        config: StripeConfig,
        api_key: SecretStr,
        *,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        self._api_key = api_key
        self._session_url = config.api_base.rstrip("/") + SESSION_PATH
        self._stream_url = config.meter_events_base.rstrip("/") + STREAM_PATH
        headers = {
            "Stripe-Version": config.stripe_version,
            "User-Agent": f"meterstream/{__version__}",
        }
        timeout = config.request_timeout_seconds
        lean = transport is None and _lean_client_fits(self._stream_url)
        self._sessions: Transport = HttpxTransport(
            headers=headers,
            timeout=timeout,
            max_connections=SESSION_CONNECTIONS if lean else max_connections,
            transport=transport,
        )
        self._stream: Transport = self._sessions
        if lean:
            parts = urlsplit(self._stream_url)
            self._stream = LeanTransport(
                f"{parts.scheme}://{parts.netloc}",
                headers=headers,
                timeout=timeout,
                max_connections=max_connections,
            )

    @property
    def lean(self) -> bool:
        """Whether meter events travel through the lean client."""
        return isinstance(self._stream, LeanTransport)

    async def _post(
        self, transport: Transport, url: str, content: bytes, token: str, account: str | None
    ) -> Answer:
        """One attempt within ``stripe.request_timeout_seconds``, replayed once if unsent.

        ``account``: a connected account, named in ``Stripe-Context`` (the session request
        and every stream request with that session's token carry the same one).
        """
        deadline = asyncio.get_running_loop().time() + self._config.request_timeout_seconds
        headers = {"Authorization": f"Bearer {token}"}
        if account is not None:
            headers[STRIPE_CONTEXT] = account
        try:
            return await transport.post(url, content, headers, deadline=deadline)
        except UnsentError:
            # Nothing reached Stripe; and were it otherwise, the identifiers make it safe.
            return await transport.post(url, content, headers, deadline=deadline)

    async def create_session(self, account: str | None = None) -> Session:
        """A new meter event session (authenticated with the API key) for the platform, or
        for the connected ``account``."""
        answer = await self._post(
            self._sessions, self._session_url, b"{}", self._api_key.get_secret_value(), account
        )
        if answer.status != 200:
            raise translate_response(answer, session_endpoint=True, account=account)
        try:
            body = orjson.loads(answer.body)
            return Session(
                id=str(body["id"]),
                token=str(body["authentication_token"]),
                expires_at=_parse_time(body["expires_at"]),
                account=account,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackoffError(
                f"unexpected meter event session response from Stripe: {type(exc).__name__}",
                cause="server_error",
                status=200,
                request_id=answer.headers.get("request-id"),
            ) from exc

    async def send_events(self, events: Sequence[MeterEventBody], session: Session) -> str | None:
        """Send one batch (1..100 events); return Stripe's Request-Id on HTTP 200."""
        content = encode_events(events)
        answer = await self._post(
            self._stream, self._stream_url, content, session.token, session.account
        )
        if answer.status != 200:
            raise translate_response(answer, session_endpoint=False, account=session.account)
        return answer.headers.get("request-id")

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._stream.aclose()
        if self._stream is not self._sessions:
            await self._sessions.aclose()
