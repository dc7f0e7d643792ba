"""The meter event stream: batch limits, per-event checks, dedupe, meters by name."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer, Meter

from .support import STREAM, error_of, event, new_token, rfc3339, send

DAY = 86_400
CEST = timezone(timedelta(hours=2))


@pytest.fixture
def token(http: httpx.Client) -> str:
    return new_token(http)


def test_a_full_batch_is_accepted_and_counted(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    events = [event(i % 10 + 1, customer=f"cus_{i % 3}") for i in range(100)]

    response = send(http, token, events)

    assert response.status_code == 200
    assert response.json() == {}
    assert response.headers["request-id"].startswith("req_")
    totals = emulator.state.totals("api_requests")["api_requests"]
    expected = {f"cus_{c}": sum(i % 10 + 1 for i in range(100) if i % 3 == c) for c in range(3)}
    assert {customer: t["sum"] for customer, t in totals.items()} == expected
    assert sum(t["count"] for t in totals.values()) == 100
    assert emulator.state.events_accepted == 100


def test_every_response_has_its_own_request_id(http: httpx.Client, token: str) -> None:
    responses = [
        send(http, token, [event()]),
        send(http, token, []),
        send(http, "mestok_test_unknown", [event()]),
        http.get("/v1/billing/meters"),
        http.get("/nowhere"),
        http.get("/_emulator/stats"),
    ]

    ids = [r.headers["request-id"] for r in responses]
    assert all(i.startswith("req_") for i in ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"events": []}, "parameter_invalid_empty"),
        ({}, "parameter_missing"),
        ({"events": {"event_name": "x"}}, "invalid_request"),
        ({"events": [], "extra": 1}, "parameter_unknown"),
        ([1, 2], "invalid_request"),
    ],
)
def test_a_malformed_request_is_refused(
    http: httpx.Client, token: str, body: Any, code: str
) -> None:
    response = http.post(STREAM, json=body, headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


def test_101_events_are_refused_whole(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    response = send(http, token, [event() for _ in range(101)])

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "array_too_long"
    assert "100" in error["message"]
    assert emulator.state.events_accepted == 0


def test_invalid_json_is_refused(http: httpx.Client, token: str) -> None:
    response = http.post(
        STREAM,
        content=b'{"events": [',
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )

    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_json"


def _broken(**changes: Any) -> dict[str, Any]:
    body = event()
    for key, value in changes.items():
        if key.startswith("payload__"):
            name = key.removeprefix("payload__")
            if value is None:
                del body["payload"][name]
            else:
                body["payload"][name] = value
        elif value is None:
            del body[key]
        else:
            body[key] = value
    return body


#: Malformed events: the whole request is refused with a 400. Built inside the test
#: (timestamps relative to the moment it runs).
MALFORMED_EVENTS: list[tuple[str, Callable[[float], Any], str]] = [
    ("not an object", lambda now: "just a string", "invalid_request"),
    ("no event_name", lambda now: _broken(event_name=None), "parameter_missing"),
    ("empty event_name", lambda now: _broken(event_name=""), "parameter_missing"),
    ("event_name not a string", lambda now: _broken(event_name=7), "parameter_missing"),
    (
        "event_name over 100",
        lambda now: _broken(event_name="e" * 101),
        "string_length_exceeds_maximum",
    ),
    ("no payload", lambda now: _broken(payload=None), "parameter_missing"),
    ("payload not an object", lambda now: _broken(payload=["cus_1", "1"]), "parameter_missing"),
    ("payload value not a string", lambda now: _broken(payload__value=5), "invalid_payload"),
    ("payload extra key not a string", lambda now: _broken(payload__region=1), "invalid_payload"),
    (
        "36 days old",
        lambda now: _broken(timestamp=rfc3339(now - 36 * DAY)),
        "timestamp_too_far_in_past",
    ),
    ("6 minutes ahead", lambda now: _broken(timestamp=rfc3339(now + 360)), "timestamp_in_future"),
    ("date only", lambda now: _broken(timestamp="2026-01-01"), "invalid_timestamp"),
    ("no offset", lambda now: _broken(timestamp="2026-01-01T12:00:00"), "invalid_timestamp"),
    ("not a date", lambda now: _broken(timestamp="yesterday at noon"), "invalid_timestamp"),
    ("epoch number", lambda now: _broken(timestamp=int(now)), "invalid_timestamp"),
    ("null timestamp", lambda now: event() | {"timestamp": None}, "invalid_request"),
    ("identifier over 100", lambda now: _broken(identifier="i" * 101), "invalid_identifier"),
    ("empty identifier", lambda now: _broken(identifier=""), "invalid_identifier"),
    ("identifier not a string", lambda now: _broken(identifier=12), "invalid_identifier"),
    ("unknown field", lambda now: _broken(quantity="3"), "parameter_unknown"),
]

#: Well-formed events Stripe accepts with the 200 and drops on validation.
DROPPED_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("no customer", _broken(payload__stripe_customer_id=None), "meter_event_no_customer_defined"),
    ("empty customer", _broken(payload__stripe_customer_id=""), "meter_event_no_customer_defined"),
    ("no value", _broken(payload__value=None), "meter_event_invalid_value"),
    ("decimal value", _broken(payload__value="1.5"), "meter_event_invalid_value"),
    ("word value", _broken(payload__value="ten"), "meter_event_invalid_value"),
    ("plus sign", _broken(payload__value="+5"), "meter_event_invalid_value"),
    ("blank value", _broken(payload__value=""), "meter_event_invalid_value"),
    ("non-ascii digits", _broken(payload__value="\u0661\u0662"), "meter_event_invalid_value"),
    ("16 digits", _broken(payload__value="1234567890123456"), "meter_event_value_too_many_digits"),
    (
        "-16 digits",
        _broken(payload__value="-1234567890123456"),
        "meter_event_value_too_many_digits",
    ),
]


@pytest.mark.parametrize(
    ("make_bad", "code"),
    [(make, code) for _, make, code in MALFORMED_EVENTS],
    ids=[i[0] for i in MALFORMED_EVENTS],
)
def test_one_malformed_event_refuses_the_whole_request(
    emulator: EmulatorServer,
    http: httpx.Client,
    token: str,
    make_bad: Callable[[float], Any],
    code: str,
) -> None:
    good_before, good_after = event(), event()

    response = send(http, token, [good_before, make_bad(time.time()), good_after])

    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"].startswith("events[1]")
    assert emulator.state.events_accepted == 0
    assert not emulator.state.seen(good_before["identifier"])
    stats = emulator.stats()["events"]
    assert stats["rejected_by_code"] == {code: 1}


@pytest.mark.parametrize(
    ("bad", "code"),
    [(bad, code) for _, bad, code in DROPPED_EVENTS],
    ids=[i[0] for i in DROPPED_EVENTS],
)
def test_an_event_failing_validation_is_accepted_then_dropped(
    emulator: EmulatorServer, http: httpx.Client, token: str, bad: dict[str, Any], code: str
) -> None:
    emulator.configure(validation_delay_seconds=0)
    bad = bad | {"identifier": f"bad-{code}-{time.monotonic_ns()}"}

    response = send(http, token, [event(2), bad, event(3)])

    assert response.status_code == 200
    assert response.json() == {}
    assert emulator.state.totals()["api_requests"]["cus_1"] == {"sum": 5, "count": 2, "last": 3}
    assert not emulator.state.seen(bad["identifier"])  # a fixed resend would be billed
    stats = emulator.stats()["events"]
    assert stats["accepted"] == 2
    assert stats["dropped_by_code"] == {code: 1}
    assert stats["rejected"] == 0
    [report] = emulator.state.thin_events(time.time())
    [error_type] = report.body["data"]["reason"]["error_types"]
    assert error_type["code"] == code
    assert error_type["sample_errors"][0]["request"] == {"identifier": bad["identifier"]}


@pytest.mark.parametrize(
    ("bad", "code"),
    [(bad, code) for _, bad, code in DROPPED_EVENTS],
    ids=[i[0] for i in DROPPED_EVENTS],
)
def test_sync_validation_refuses_what_would_be_dropped(
    emulator: EmulatorServer, http: httpx.Client, token: str, bad: dict[str, Any], code: str
) -> None:
    emulator.configure(sync_validation=True)

    response = send(http, token, [event(), bad])

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code
    assert error["param"].startswith("events[1]")
    assert emulator.state.events_accepted == 0
    assert emulator.stats()["events"]["dropped"] == 0


def test_every_malformed_event_is_counted_and_named(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    events = [
        event(),
        _broken(identifier=""),
        _broken(payload__value="x"),  # would be dropped; the request is refused anyway
        _broken(timestamp="nope"),
        event(),
    ]

    error = error_of(send(http, token, events))

    assert error["code"] == "invalid_identifier"  # the first one
    assert "events[1]" in error["message"]
    assert "events[3]" in error["message"]
    assert emulator.stats()["events"]["rejected_by_code"] == {
        "invalid_identifier": 1,
        "invalid_timestamp": 1,
    }
    assert emulator.stats()["events"]["awaiting_validation"] == 0


def test_values_at_the_limits_are_accepted(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    events = [
        event("999999999999999"),  # 15 digits
        event("-999999999999999"),
        event("0000000000000000007"),  # 19 characters, 1 significant digit
        event("0"),
        event("-3"),  # negative values correct usage (Stripe documents them)
    ]

    assert send(http, token, events).status_code == 200

    total = emulator.state.totals()["api_requests"]["cus_1"]
    assert total["sum"] == 999999999999999 - 999999999999999 + 7 + 0 - 3
    assert total["count"] == 5


def test_names_identifiers_and_timestamps_at_the_limits_are_accepted(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    now = time.time()
    events = [
        event(name="n" * 100),
        event(identifier="i" * 100),
        event(timestamp=now - 35 * DAY + 60),
        event(timestamp=now + 240),
        event(timestamp=datetime.fromtimestamp(now - 3600, CEST).isoformat()),  # +02:00
        event(identifier=None),
        event(region="eu-west-1", tier="gold"),  # extra payload keys are fine
    ]

    response = send(http, token, events)

    assert response.status_code == 200, response.text
    assert emulator.state.events_accepted == 7
    assert emulator.state.seen("i" * 100)


def test_a_missing_timestamp_means_now(emulator: EmulatorServer, http: httpx.Client) -> None:
    token = new_token(http)
    before = int(time.time()) // 60 * 60

    assert send(http, token, [event(5)]).status_code == 200

    meter = emulator.state.meters["api_requests"]
    rows = emulator.state.summaries("api_requests", "cus_1", [(before, before + 180)], "sum")
    assert meter.formula == "sum"
    assert rows[0][2] == 5


def test_a_duplicate_identifier_is_accepted_but_not_counted_twice(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    first = event(10, identifier="order-1")
    again = event(99, identifier="order-1")  # a resend: same identifier, whatever the body

    assert send(http, token, [first]).status_code == 200
    assert send(http, token, [again]).status_code == 200
    assert send(http, token, [event(1, identifier="order-2"), event(1, identifier="order-2")])

    total = emulator.state.totals()["api_requests"]["cus_1"]
    assert total == {"sum": 11, "count": 2, "last": 1}
    stats = emulator.stats()["events"]
    assert stats["accepted"] == 2
    assert stats["duplicates"] == 2


def test_dedupe_lasts_a_rolling_24_hours(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(session_ttl_seconds=10 * DAY)
    token = new_token(http)
    assert send(http, token, [event(1, identifier="early")]).status_code == 200
    emulator.configure(clock_offset_seconds=12 * 3600)
    assert send(http, token, [event(1, identifier="later")]).status_code == 200

    emulator.configure(clock_offset_seconds=DAY - 60)  # "early" is 23h59m old: still a duplicate
    assert send(http, token, [event(1, identifier="early")]).status_code == 200
    assert emulator.state.duplicates == 1

    emulator.configure(clock_offset_seconds=DAY + 1)  # now older than 24 h: counted again
    assert send(http, token, [event(1, identifier="early"), event(1, identifier="later")])

    assert emulator.state.duplicates == 2  # "later" is only 12 h old
    assert emulator.state.events_accepted == 3
    assert emulator.state.seen("early")


def test_an_unknown_event_name_creates_a_sum_meter(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    assert send(http, token, [event(3, name="gb_hours")]).status_code == 200

    meters = http.get("/v1/billing/meters").json()["data"]
    meter = next(m for m in meters if m["event_name"] == "gb_hours")
    assert meter["default_aggregation"] == {"formula": "sum"}
    assert meter["customer_mapping"] == {"event_payload_key": "stripe_customer_id", "type": "by_id"}
    assert meter["value_settings"] == {"event_payload_key": "value"}


def test_without_auto_meters_an_unknown_event_name_is_accepted_then_dropped(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    emulator.configure(auto_meters=False, validation_delay_seconds=0)
    emulator.add_meter(Meter("api_requests"))

    assert send(http, token, [event(name="api_requests")]).status_code == 200
    response = send(http, token, [event(name="gb_hours", identifier="gb-1")])

    assert response.status_code == 200
    assert "gb_hours" not in emulator.state.meters
    assert emulator.stats()["events"]["dropped_by_code"] == {"no_meter": 1}
    [report] = emulator.state.thin_events(time.time())
    assert report.type == "v1.billing.meter.no_meter_found"
    assert report.body["related_object"] is None
    assert not emulator.state.seen("gb-1")


def test_a_meter_with_its_own_payload_keys(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    emulator.add_meter(Meter("tokens", customer_key="account", value_key="tokens"))
    good = {"event_name": "tokens", "payload": {"account": "cus_9", "tokens": "250"}}
    default_keys = event(name="tokens")  # stripe_customer_id/value: not this meter's keys

    emulator.configure(validation_delay_seconds=0)

    assert send(http, token, [good]).status_code == 200
    assert send(http, token, [default_keys]).status_code == 200

    assert emulator.state.totals()["tokens"] == {"cus_9": {"sum": 250, "count": 1, "last": 250}}
    assert emulator.stats()["events"]["dropped_by_code"] == {"meter_event_no_customer_defined": 1}
    [report] = emulator.state.thin_events(time.time())
    [error_type] = report.body["data"]["reason"]["error_types"]
    assert "'account'" in error_type["sample_errors"][0]["error_message"]


def test_a_count_meter_needs_no_value(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    emulator.add_meter(Meter("logins", formula="count"))
    no_value = {"event_name": "logins", "payload": {"stripe_customer_id": "cus_1"}}

    not_a_number = event("x", name="logins")  # a count meter does not read the value

    response = send(http, token, [no_value, no_value | {}, event(name="logins"), not_a_number])

    assert response.status_code == 200
    assert emulator.state.totals()["logins"]["cus_1"]["count"] == 4
    assert emulator.stats()["events"]["awaiting_validation"] == 0


def test_events_for_an_inactive_meter_are_dropped(
    emulator: EmulatorServer, http: httpx.Client, token: str
) -> None:
    emulator.configure(validation_delay_seconds=0)
    meter = emulator.add_meter(Meter("api_requests"))
    assert http.post(f"/v1/billing/meters/{meter.id}/deactivate").json()["status"] == "inactive"

    assert send(http, token, [event(5)]).status_code == 200

    assert emulator.state.totals().get("api_requests", {}) == {}
    assert emulator.stats()["events"]["dropped_by_code"] == {"archived_meter": 1}
    [report] = emulator.state.thin_events(time.time())
    assert report.object_id == meter.id
    assert http.post(f"/v1/billing/meters/{meter.id}/reactivate").json()["status"] == "active"
    assert send(http, token, [event(7)]).status_code == 200
    assert emulator.state.totals()["api_requests"]["cus_1"]["sum"] == 7
