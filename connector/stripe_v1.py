"""Stripe's v1 reads, authenticated with the API key: the meters list and event summaries.

These are the slow, rare calls (a listing per minute, a summary per meter and customer
when reconciling), so plain httpx. Failures are translated here, once, into the
``StripeError`` family, and callers decide by type:

    429, 5xx, 408/409/425, timeouts, connection errors -> BackoffError (an outage: retry)
    401, 403, 404 on a list, 405                       -> AuthenticationError (the key, its
                                                          permissions or stripe.api_base)
    other 4xx                                          -> StripeError (a bad request)

Lists are read page by page (``limit=100``, cursor ``starting_after``) until ``has_more``
is false. The API key only ever goes into the Authorization header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
import orjson
from pydantic import SecretStr

from connector import __version__
from connector.config import StripeConfig
from connector.errors import AuthenticationError, BackoffError, StripeError
from connector.sink import STRIPE_CONTEXT, parse_retry_after

log = logging.getLogger("meterstream.stripe")
_T = TypeVar("_T")

#: Stripe's largest page for v1 lists.
PAGE_LIMIT = 100
#: Status codes that mean "wait and try again" rather than "this request is wrong".
_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_HINTS = {
    401: "check STRIPE_API_KEY (stripe.api_key)",
    403: "the key lacks permission to read billing meters: give the restricted key "
    "'Billing meters: read'",
    404: "check stripe.api_base",
    405: "check stripe.api_base",
}


def translate(response: httpx.Response, doing: str) -> StripeError:
    """The StripeError for a non-200 answer to ``doing`` (e.g. "listing billing meters")."""
    status = response.status_code
    request_id = response.headers.get("request-id")
    detail = f"HTTP {status} from Stripe {doing}: {_error_message(response)}"
    if status >= 500 or status in _RETRYABLE_4XX:
        return BackoffError(
            detail,
            cause="rate_limited" if status == 429 else "server_error",
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            status=status,
            request_id=request_id,
        )
    hint = _HINTS.get(status)
    if hint is not None and not (status == 404 and _is_resource_missing(response)):
        return AuthenticationError(f"{detail} ({hint})", status=status, request_id=request_id)
    return StripeError(detail, status=status, request_id=request_id)


def _error_message(response: httpx.Response) -> str:
    error = _error_object(response)
    message = error.get("message") if error else None
    if isinstance(message, str) and message:
        return message
    text = response.text[:200].strip() if response.content else ""
    return text or response.reason_phrase or f"HTTP {response.status_code}"


def _error_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _is_resource_missing(response: httpx.Response) -> bool:
    """A 404 about one object (a meter id), not about the URL: the base is right."""
    error = _error_object(response)
    return error is not None and error.get("code") == "resource_missing"


class StripeV1Client:
    """One httpx client for v1 reads; use as an async context manager."""

    def __init__(
        self,
        config: StripeConfig,
        api_key: SecretStr,
        *,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = config.request_timeout_seconds
        self._host = httpx.URL(config.api_base).host
        self._http = httpx.AsyncClient(
            base_url=config.api_base.rstrip("/"),
            timeout=httpx.Timeout(config.request_timeout_seconds),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={
                "Authorization": f"Bearer {api_key.get_secret_value()}",
                "Stripe-Version": config.stripe_version,
                "User-Agent": f"meterstream/{__version__}",
            },
            transport=transport,
        )

    async def __aenter__(self) -> StripeV1Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._http.aclose()

    async def get(
        self, path: str, params: Mapping[str, Any], doing: str, *, account: str | None = None
    ) -> dict[str, Any]:
        """One GET (on the connected ``account`` if given, through ``Stripe-Context``); the
        JSON object it answered, or a StripeError saying what failed."""
        headers = {STRIPE_CONTEXT: account} if account is not None else None
        try:
            response = await self._http.get(path, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise BackoffError(
                f"timed out after {self._timeout:g} s {doing} ({type(exc).__name__})",
                cause="timeout",
            ) from exc
        except httpx.TransportError as exc:
            raise BackoffError(
                f"cannot reach {self._host} {doing}: {type(exc).__name__}: {exc}",
                cause="connection",
            ) from exc
        if response.status_code != 200:
            raise translate(response, doing)
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise BackoffError(
                f"unexpected answer from Stripe {doing}: not a JSON object",
                cause="server_error",
                status=200,
                request_id=response.headers.get("request-id"),
            )
        return body

    async def list_all(
        self,
        path: str,
        params: dict[str, str | int],
        doing: str,
        *,
        account: str | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every object of a v1 list, following ``starting_after`` until ``has_more`` is false."""
        query: dict[str, str | int] = {**params, "limit": PAGE_LIMIT}
        while True:
            page = await self.get(path, query, doing, account=account)
            data = page.get("data")
            if not isinstance(data, list):
                raise BackoffError(
                    f"unexpected answer from Stripe {doing}: no 'data' list", cause="server_error"
                )
            for item in data:
                if isinstance(item, dict):
                    yield item
            if not page.get("has_more") or not data:
                return
            last = data[-1]
            if not isinstance(last, dict) or not isinstance(last.get("id"), str):
                raise BackoffError(
                    f"unexpected answer from Stripe {doing}: a listed object has no id",
                    cause="server_error",
                )
            query["starting_after"] = last["id"]


async def retry_outages(
    call: Callable[[], Awaitable[_T]],
    *,
    doing: str,
    initial_seconds: float,
    max_seconds: float,
    attempts: int | None,
) -> _T:
    """``call()`` again after each BackoffError (exponential backoff, ``Retry-After`` honoured).

    ``attempts`` None retries until Stripe answers, with a warning each time; otherwise the
    last BackoffError is raised after that many attempts, its message starting with
    "Stripe unreachable". Every other error is raised at once.
    """
    delay = initial_seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except BackoffError as exc:
            if attempts is not None and attempt >= attempts:
                raise BackoffError(
                    f"Stripe unreachable: {exc} (gave up after {attempt} attempts)",
                    cause=exc.cause,
                    status=exc.status,
                    request_id=exc.request_id,
                ) from None
            wait = min(max(delay, exc.retry_after or 0.0), max(max_seconds, initial_seconds))
            log.warning("%s failed, retrying in %.1f s: %s", doing, wait, exc)
            await asyncio.sleep(wait)
            delay = min(delay * 2, max_seconds)
