"""Translation of Stripe's answers into the error family (sink.translate_response)."""

from __future__ import annotations

import orjson
import pytest

from connector.errors import (
    AuthenticationError,
    BackoffError,
    RejectedBatchError,
    SessionExpiredError,
)
from connector.sink import Answer, parse_retry_after, translate_response


def _response(status: int, body: object = None, **headers: str) -> Answer:
    content = orjson.dumps(body) if body is not None else b""
    lowered = {name.lower().replace("_", "-"): value for name, value in headers.items()}
    return Answer(status, "", {"request-id": "req_1", **lowered}, content)


def _v2(kind: str, code: str = "x") -> dict[str, object]:
    return {"error": {"type": kind, "code": code, "message": "m"}}


@pytest.mark.parametrize("status", [401, 400])
def test_expired_session_in_either_status(status: int) -> None:
    body = _v2("temporary_session_expired", "billing_meter_event_session_expired")
    err = translate_response(_response(status, body), session_endpoint=False)
    assert isinstance(err, SessionExpiredError)
    assert err.request_id == "req_1"


def test_429_with_retry_after() -> None:
    err = translate_response(
        _response(429, _v2("rate_limit"), **{"retry-after": "3"}), session_endpoint=False
    )
    assert isinstance(err, BackoffError)
    assert (err.cause, err.retry_after) == ("rate_limited", 3.0)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 409])
def test_server_errors_are_outages(status: int) -> None:
    err = translate_response(_response(status, "oops"), session_endpoint=False)
    assert isinstance(err, BackoffError)
    assert err.cause == "server_error"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_key_or_wrong_url_is_configuration(status: int) -> None:
    v1 = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}
    err = translate_response(_response(status, v1), session_endpoint=True)
    assert isinstance(err, AuthenticationError)
    assert "sk_" not in str(err)


def test_other_4xx_rejects_the_batch_with_stripe_message_and_code() -> None:
    body = {"error": {"type": "invalid_request_error", "code": "bad_value", "message": "nope"}}
    err = translate_response(_response(400, body), session_endpoint=False)
    assert isinstance(err, RejectedBatchError)
    assert (err.code, err.status, err.request_id) == ("bad_value", 400, "req_1")
    assert "nope" in str(err)


def test_non_json_error_body_is_tolerated() -> None:
    err = translate_response(
        Answer(400, "Bad Request", {}, b"<html>bad</html>"), session_endpoint=False
    )
    assert isinstance(err, RejectedBatchError)


def test_retry_after_forms() -> None:
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
