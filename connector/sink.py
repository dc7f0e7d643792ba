"""The only module that speaks HTTP to Stripe and knows its status codes.

Foreign failures (httpx exceptions, status codes, error bodies) are translated here, once,
into the ``StripeError`` family of ``connector.errors``; everything above this module
decides by exception type alone (DESIGN 3.4):

    200                              -> success
    429, 5xx, 408, 409, timeouts,    -> BackoffError (an outage: retry, never dead-letter)
      connection errors
    401/400 temporary_session_expired -> SessionExpiredError (renew, resend once)
    401, 403, 404, 405 otherwise      -> AuthenticationError (configuration: not ready)
    other 4xx                         -> RejectedBatchError (the data: split, dead-letter)

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
from collections.abc import Sequence
from datetime import datetime
from typing import Any
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


def _error_fields(response: httpx.Response) -> tuple[str | None, str | None, str]:
    """(type, code, message) from a v1 or v2 Stripe error body; tolerant of anything."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        text = response.text[:200].strip() if response.content else ""
        return None, None, text or response.reason_phrase or f"HTTP {response.status_code}"
    kind = error.get("type")
    code = error.get("code")
    message = error.get("message")
    return (
        kind if isinstance(kind, str) else None,
        code if isinstance(code, str) else None,
        message if isinstance(message, str) else f"HTTP {response.status_code}",
    )


def translate_response(response: httpx.Response, *, session_endpoint: bool) -> StripeError:
    """The StripeError for a non-200 response."""
    status = response.status_code
    request_id = response.headers.get("request-id")
    kind, code, message = _error_fields(response)
    where = "creating a meter event session" if session_endpoint else "sending meter events"
    detail = f"HTTP {status} from Stripe {where}: {message}"
    if status == 429 or status >= 500 or status in _RETRYABLE_4XX:
        return BackoffError(
            detail,
            cause="rate_limited" if status == 429 else "server_error",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
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


class StripeSink:
    """Pooled HTTP/1.1 connections to both Stripe hosts, shared by every request of a process.

    Meter events, the hot path, go through ``connector.http11`` (a lean keep-alive client:
    a fiftieth of httpx's CPU per request); session requests, a few per hour, and any
    setup the lean client does not cover (a proxy, an injected transport) use httpx.
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
        lean = transport is None and _lean_client_fits(self._stream_url)
        # With the lean client carrying meter events, httpx only makes sessions. Otherwise
        # several small httpx pools rather than one big one: httpcore's pool scans every
        # connection and queued request on each state change, so its cost per request
        # grows with the pool (a fifth of the connector's CPU at 32 connections). Requests
        # go round-robin; each pool keeps its connections alive.
        httpx_connections = SESSION_CONNECTIONS if lean else max_connections
        shards = max(1, -(-httpx_connections // CONNECTIONS_PER_POOL)) if transport is None else 1
        per_pool = -(-httpx_connections // shards) + 1
        self._clients = [
            httpx.AsyncClient(
                timeout=httpx.Timeout(config.request_timeout_seconds),
                limits=httpx.Limits(max_connections=per_pool, max_keepalive_connections=per_pool),
                headers={
                    "Stripe-Version": config.stripe_version,
                    "User-Agent": f"meterstream/{__version__}",
                },
                transport=transport,
            )
            for _ in range(shards)
        ]
        self._next = itertools.cycle(self._clients)
        self._lean: http11.Client | None = None
        if lean:
            parts = urlsplit(self._stream_url)
            self._stream_target = parts.path + (f"?{parts.query}" if parts.query else "")
            self._lean = http11.Client(
                f"{parts.scheme}://{parts.netloc}",
                headers={
                    "Stripe-Version": config.stripe_version,
                    "User-Agent": f"meterstream/{__version__}",
                    "Accept": "*/*",
                    "Content-Type": "application/json",
                },
                timeout=config.request_timeout_seconds,
                max_connections=max_connections,
                # The same trust as httpx (certifi, or SSL_CERT_FILE / SSL_CERT_DIR).
                ssl_context=httpx.create_ssl_context() if parts.scheme == "https" else None,
            )

    async def _post(self, url: str, content: bytes, token: str, *, session: bool) -> httpx.Response:
        try:
            # httpx's timeout is per phase (pool, connect, write, read): this one bounds the
            # whole attempt, as stripe.request_timeout_seconds promises.
            async with asyncio.timeout(self._config.request_timeout_seconds):
                return await next(self._next).post(
                    url,
                    content=content,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    },
                )
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise BackoffError(
                f"timed out after {self._config.request_timeout_seconds:g} s calling Stripe "
                f"({type(exc).__name__})",
                cause="timeout",
            ) from exc
        except httpx.TransportError as exc:
            target = self._session_url if session else self._stream_url
            raise BackoffError(
                f"cannot reach {httpx.URL(target).host}: {type(exc).__name__}: {exc}",
                cause="connection",
            ) from exc

    async def create_session(self) -> Session:
        """A new meter event session (authenticated with the API key)."""
        response = await self._post(
            self._session_url, b"{}", self._api_key.get_secret_value(), session=True
        )
        if response.status_code != 200:
            raise translate_response(response, session_endpoint=True)
        try:
            body = orjson.loads(response.content)
            return Session(
                id=str(body["id"]),
                token=str(body["authentication_token"]),
                expires_at=_parse_time(body["expires_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BackoffError(
                f"unexpected meter event session response from Stripe: {type(exc).__name__}",
                cause="server_error",
                status=200,
                request_id=response.headers.get("request-id"),
            ) from exc

    async def send_events(self, events: Sequence[MeterEventBody], session: Session) -> str | None:
        """Send one batch (1..100 events); return Stripe's Request-Id on HTTP 200."""
        content = orjson.dumps({"events": events})
        if self._lean is not None:
            return await self._send_lean(self._lean, content, session.token)
        response = await self._post(self._stream_url, content, session.token, session=False)
        if response.status_code != 200:
            raise translate_response(response, session_endpoint=False)
        request_id: str | None = response.headers.get("request-id")
        return request_id

    async def _send_lean(self, client: http11.Client, content: bytes, token: str) -> str | None:
        try:
            answer = await client.post(
                self._stream_target, content, {"Authorization": f"Bearer {token}"}
            )
        except http11.HTTPTimeoutError as exc:
            raise BackoffError(
                f"timed out after {self._config.request_timeout_seconds:g} s calling Stripe "
                f"({exc.phase})",
                cause="timeout",
            ) from exc
        except http11.HTTPError as exc:
            raise BackoffError(
                f"cannot reach {urlsplit(self._stream_url).hostname}: {type(exc).__name__}: {exc}",
                cause="connection",
            ) from exc
        if answer.status != 200:
            # Errors are rare: the one translation, through the httpx model it expects.
            response = httpx.Response(
                answer.status,
                headers=answer.headers,
                content=answer.body,
                extensions={"reason_phrase": answer.reason.encode("latin-1")},
            )
            raise translate_response(response, session_endpoint=False)
        return answer.headers.get("request-id")

    async def aclose(self) -> None:
        """Close pooled connections."""
        for client in self._clients:
            await client.aclose()
        if self._lean is not None:
            await self._lean.aclose()
