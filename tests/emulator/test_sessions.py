"""Meter event sessions: creation, API keys, lifetime, expiry (never by sleeping)."""

from __future__ import annotations

import re
from datetime import datetime

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer

from .support import SESSION, error_of, event, new_token, send

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_session_is_the_full_stripe_object(http: httpx.Client) -> None:
    response = http.post(SESSION, json={})

    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert set(body) == {
        "id",
        "object",
        "authentication_token",
        "created",
        "expires_at",
        "livemode",
    }
    assert body["object"] == "v2.billing.meter_event_session"
    assert body["id"].startswith("mes_")
    assert body["livemode"] is False
    assert RFC3339_MS.match(body["created"]), body["created"]
    assert RFC3339_MS.match(body["expires_at"]), body["expires_at"]
    assert _seconds(body["expires_at"]) - _seconds(body["created"]) == pytest.approx(900, abs=0.002)
    assert body["authentication_token"] != http.post(SESSION).json()["authentication_token"]


@pytest.mark.parametrize(
    ("key", "livemode"),
    [("sk_test_abc", False), ("sk_live_abc", True), ("rk_test_abc", False), ("rk_live_abc", True)],
)
def test_secret_and_restricted_keys_are_accepted(
    http: httpx.Client, key: str, livemode: bool
) -> None:
    response = http.post(SESSION, headers={"Authorization": f"Bearer {key}"})

    assert response.status_code == 200
    assert response.json()["livemode"] is livemode


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer pk_test_abc",
        "Bearer sk_test_",
        "Bearer whatever",
        "Token sk_test_abc",
        "Bearer",
    ],
)
def test_a_bad_api_key_gets_401_with_a_v2_error(
    emulator: EmulatorServer, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(emulator.base_url + SESSION, headers=headers, json={})

    assert response.status_code == 401
    assert response.headers["request-id"].startswith("req_")
    error = error_of(response)
    assert error["type"] != "temporary_session_expired"
    assert error["code"] == "invalid_api_key"
    assert emulator.state.sessions_created == 0


def test_session_lifetime_follows_the_knob(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(session_ttl_seconds=42)

    body = http.post(SESSION).json()

    assert _seconds(body["expires_at"]) - _seconds(body["created"]) == pytest.approx(42, abs=0.002)


def test_unknown_token_reads_as_expired(http: httpx.Client) -> None:
    response = send(http, "mestok_test_never_issued", [event()])

    assert response.status_code == 401
    error = error_of(response)
    assert error["type"] == "temporary_session_expired"
    assert error["code"] == "billing_meter_event_session_expired"


@pytest.mark.parametrize("authorization", [None, "Bearer sk_test_abc", "Basic Zm9vOg=="])
def test_missing_token_or_an_api_key_on_the_stream_is_not_expiry(
    emulator: EmulatorServer, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(
        emulator.base_url + "/v2/billing/meter_event_stream",
        json={"events": [event()]},
        headers=headers,
    )

    assert response.status_code == 401
    assert error_of(response)["type"] != "temporary_session_expired"
    assert emulator.state.events_accepted == 0


def test_a_session_expires_when_its_lifetime_passes(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(session_ttl_seconds=60)
    token = new_token(http)
    assert send(http, token, [event()]).status_code == 200

    emulator.configure(clock_offset_seconds=61)  # a minute later, without waiting for it

    response = send(http, token, [event()])
    assert response.status_code == 401
    assert error_of(response)["type"] == "temporary_session_expired"
    assert send(http, new_token(http), [event()]).status_code == 200
    assert emulator.state.events_accepted == 2


def test_force_expiry_ends_every_live_session(emulator: EmulatorServer, http: httpx.Client) -> None:
    tokens = [new_token(http) for _ in range(3)]

    assert emulator.expire_sessions() == 3

    for token in tokens:
        assert error_of(send(http, token, [event()]))["type"] == "temporary_session_expired"
    assert send(http, new_token(http), [event()]).status_code == 200


def test_force_expiry_over_http(http: httpx.Client) -> None:
    first, second = new_token(http), new_token(http)

    assert http.post("/_emulator/expire_sessions").json() == {"expired_sessions": 2}
    assert send(http, first, [event()]).status_code == 401

    third = new_token(http)
    reply = http.post("/_emulator/configure", json={"expire_sessions": True}).json()
    assert reply["expired_sessions"] == 1
    assert send(http, second, [event()]).status_code == 401
    assert send(http, third, [event()]).status_code == 401


def test_sessions_expire_after_k_stream_requests(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(session_max_requests=2)
    token = new_token(http)

    statuses = [send(http, token, [event()]).status_code for _ in range(3)]

    assert statuses == [200, 200, 401]
    assert send(http, token, [event()]).status_code == 401  # stays expired
    fresh = new_token(http)
    assert [send(http, fresh, [event()]).status_code for _ in range(3)] == [200, 200, 401]
    stats = emulator.stats()
    assert stats["sessions"]["created"] == 2
    assert stats["sessions"]["expired_responses"] == 3
    assert stats["events"]["accepted"] == 4


def test_every_nth_request_expires_its_session_even_a_fresh_one(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(session_expire_every=3)
    first = new_token(http)
    assert send(http, first, [event()]).status_code == 200
    assert send(http, first, [event()]).status_code == 200
    assert error_of(send(http, first, [event()]))["type"] == "temporary_session_expired"
    assert error_of(send(http, first, [event()]))["type"] == "temporary_session_expired"
    fresh = new_token(http)  # the count runs across sessions: request 6 expires this one
    assert send(http, fresh, [event()]).status_code == 200
    assert error_of(send(http, fresh, [event()]))["type"] == "temporary_session_expired"
    assert emulator.state.events_accepted == 3
