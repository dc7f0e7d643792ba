"""Small helpers shared by the emulator tests: sessions, events, timestamps."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, datetime
from typing import Any

import httpx

API_KEY = "sk_test_emulator_tests"
STREAM = "/v2/billing/meter_event_stream"
SESSION = "/v2/billing/meter_event_session"
_ids = itertools.count(1)


def rfc3339(epoch: float) -> str:
    """``2024-06-01T12:00:00.000Z`` for an epoch."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event(
    value: str | int = "1",
    *,
    customer: str = "cus_1",
    name: str = "api_requests",
    identifier: str | None = "auto",
    timestamp: str | float | None = None,
    **payload: str,
) -> dict[str, Any]:
    """A valid meter event (a fresh identifier unless one is given; None leaves it out)."""
    body: dict[str, Any] = {
        "event_name": name,
        "payload": {"stripe_customer_id": customer, "value": str(value), **payload},
    }
    if identifier == "auto":
        body["identifier"] = f"evt-{next(_ids)}-{time.monotonic_ns()}"
    elif identifier is not None:
        body["identifier"] = identifier
    if isinstance(timestamp, float | int):
        body["timestamp"] = rfc3339(timestamp)
    elif timestamp is not None:
        body["timestamp"] = timestamp
    return body


def new_token(http: httpx.Client) -> str:
    """A fresh meter event session's token."""
    response = http.post(SESSION, json={})
    assert response.status_code == 200, response.text
    token: str = response.json()["authentication_token"]
    return token


def send(http: httpx.Client, token: str, events: list[dict[str, Any]]) -> httpx.Response:
    """POST events to the stream with a session token."""
    return http.post(STREAM, json={"events": events}, headers={"Authorization": f"Bearer {token}"})


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of an error body (asserting its shape)."""
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error.get("type"), str)
    assert isinstance(error.get("message"), str)
    assert error["message"]
    return error
