"""What Stripe says after the 200: dropped events as v2 thin events on /v2/core/events.

The grouping into validation windows is pure logic (``ErrorReports`` driven directly);
the listing, filters, paging and envelope go over HTTP against the real server.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer, Meter
from meterstream_local.emulator.reports import (
    ERROR_REPORT_TYPE,
    NO_METER_TYPE,
    DroppedEvent,
    ErrorReports,
)

from .support import event, new_token, send

EVENTS = "/v2/core/events"
T0 = 1_800_000_000.0  # a whole second, and a multiple of 2


def _dropped(code: str, name: str = "usage", identifier: str | None = "id-1") -> DroppedEvent:
    return (0, code, "payload.value", f"{code} for {name}", name, identifier)


def test_drops_become_one_report_per_meter_per_window_once_it_closes() -> None:
    reports = ErrorReports()
    ids = {"usage": "mtr_usage", "tokens": "mtr_tokens", "nothing": None}
    reports.add(
        [_dropped("meter_event_invalid_value"), _dropped("meter_event_no_customer_defined")],
        ids,
        now=T0 + 0.2,
        delay=2.0,
    )
    reports.add([_dropped("archived_meter", "tokens")], ids, now=T0 + 1.9, delay=2.0)
    reports.add([_dropped("no_meter", "nothing", None)], ids, now=T0 + 1.0, delay=2.0)
    reports.add([_dropped("meter_event_invalid_value")], ids, now=T0 + 2.0, delay=2.0)

    reports.flush(T0 + 1.99)
    assert reports.events == []  # the window [T0, T0+2) is still open

    reports.flush(T0 + 2.0)

    by_object = {e.object_id: e for e in reports.events}
    assert len(reports.events) == 3
    usage = by_object["mtr_usage"].body
    assert usage["type"] == ERROR_REPORT_TYPE
    assert usage["created"] == "2027-01-15T08:00:02.000Z"
    assert usage["data"]["validation_start"] == "2027-01-15T08:00:00.000Z"
    assert usage["data"]["validation_end"] == "2027-01-15T08:00:02.000Z"
    assert usage["data"]["reason"]["error_count"] == 2
    assert [t["code"] for t in usage["data"]["reason"]["error_types"]] == [
        "meter_event_invalid_value",
        "meter_event_no_customer_defined",
    ]
    assert by_object[None].type == NO_METER_TYPE
    assert by_object[None].body["related_object"] is None
    assert (
        by_object[None]
        .body["data"]["reason"]["error_types"][0]["sample_errors"][0]["request"]["identifier"]
        .startswith("emulator_generated_")
    )
    assert len(reports.pending) == 1  # received at T0+2: the next window
    assert reports.dropped_by_code == {
        "archived_meter": 1,
        "meter_event_invalid_value": 1,
        "meter_event_no_customer_defined": 1,
        "no_meter": 1,
    }


def test_a_zero_delay_reports_at_once_and_samples_are_capped() -> None:
    reports = ErrorReports(context="acct_1")
    many = [_dropped("meter_event_invalid_value", identifier=f"id-{i}") for i in range(25)]

    reports.add(many, {"usage": "mtr_usage"}, now=T0, delay=0)
    reports.flush(T0)

    [report] = reports.events
    [error_type] = report.body["data"]["reason"]["error_types"]
    assert error_type["error_count"] == 25
    assert len(error_type["sample_errors"]) == 10
    assert report.body["context"] == "acct_1"
    assert report.body["data"]["validation_start"] == report.body["data"]["validation_end"]


def _drop_some(http: httpx.Client, token: str, meter: str = "usage", count: int = 1) -> None:
    bad = [event("1.5", name=meter) for _ in range(count)]
    assert send(http, token, bad).status_code == 200


def test_reports_are_invisible_until_the_validation_window_closes(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(validation_delay_seconds=30)
    meter = emulator.add_meter(Meter("usage"))
    token = new_token(http)

    _drop_some(http, token)

    assert http.get(EVENTS).json()["data"] == []
    assert emulator.stats()["events"]["awaiting_validation"] == 1
    assert emulator.stats()["events"]["dropped"] == 0
    emulator.configure(clock_offset_seconds=31)  # the window has closed
    [report] = http.get(EVENTS).json()["data"]
    assert report["related_object"] == {
        "id": meter.id,
        "type": "billing.meter",
        "url": f"/v1/billing/meters/{meter.id}",
    }
    assert emulator.stats()["events"]["dropped"] == 1


def test_the_default_window_reports_within_a_few_seconds(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.add_meter(Meter("usage"))
    token = new_token(http)
    sent = time.monotonic()

    _drop_some(http, token)

    # Polled, not slept: the report is awaited (a generous bound for a busy machine).
    deadline = sent + 30
    while not http.get(EVENTS).json()["data"]:
        assert time.monotonic() < deadline, "no error report within 30 s"
        time.sleep(0.05)


def test_the_envelope_and_retrieve(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(validation_delay_seconds=0)
    emulator.add_meter(Meter("usage"))
    _drop_some(http, new_token(http))

    [listed] = http.get(EVENTS).json()["data"]
    fetched = http.get(f"{EVENTS}/{listed['id']}")

    assert fetched.status_code == 200
    assert fetched.json() == listed
    assert set(listed) == {
        "id",
        "object",
        "type",
        "created",
        "livemode",
        "context",
        "reason",
        "related_object",
        "data",
    }
    assert listed["id"].startswith("evt_")
    assert listed["object"] == "v2.core.event"
    assert listed["livemode"] is False
    assert datetime.fromisoformat(listed["created"]).tzinfo is not None
    assert set(listed["data"]) == {
        "developer_message_summary",
        "validation_start",
        "validation_end",
        "reason",
    }
    missing = http.get(f"{EVENTS}/evt_test_missing")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_filters_by_type_object_and_created(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(validation_delay_seconds=0, auto_meters=False)
    usage = emulator.add_meter(Meter("usage"))
    emulator.add_meter(Meter("tokens"))
    token = new_token(http)
    _drop_some(http, token, "usage")
    _drop_some(http, token, "tokens")
    _drop_some(http, token, "no_such_meter")
    everything = http.get(EVENTS).json()["data"]
    newest = everything[0]["created"]

    def listed(params: Any) -> list[str]:
        response = http.get(EVENTS, params=params)
        assert response.status_code == 200, response.text
        return [e["type"] for e in response.json()["data"]]

    assert len(everything) == 3
    assert listed({"types": NO_METER_TYPE}) == [NO_METER_TYPE]
    assert listed([("types", NO_METER_TYPE), ("types", ERROR_REPORT_TYPE)]) == [
        e["type"] for e in everything
    ]
    assert listed({"types[0]": ERROR_REPORT_TYPE}) == [ERROR_REPORT_TYPE] * 2  # the SDK's form
    assert listed({"object_id": usage.id}) == [ERROR_REPORT_TYPE]
    assert len(listed({"created[lte]": newest})) == 3
    assert listed({"created[gt]": newest}) == []
    too_many = http.get(EVENTS, params=[("types", f"t{i}") for i in range(21)])
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "types"
    bad_time = http.get(EVENTS, params={"created[gte]": "yesterday"})
    assert bad_time.status_code == 400


def test_pages_follow_next_page_url(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(validation_delay_seconds=0)
    for index in range(5):
        emulator.add_meter(Meter(f"m{index}"))
    token = new_token(http)
    for index in range(5):
        _drop_some(http, token, f"m{index}")

    seen: list[str] = []
    url: str | None = f"{EVENTS}?limit=2&types={ERROR_REPORT_TYPE}"
    pages = 0
    while url:
        body = http.get(url).json()
        seen += [e["id"] for e in body["data"]]
        url = body["next_page_url"]
        pages += 1

    assert pages == 3
    assert len(seen) == len(set(seen)) == 5
    assert body["previous_page_url"] is None


@pytest.mark.parametrize("auth", [None, "Bearer nope"])
def test_events_need_an_api_key(emulator: EmulatorServer, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}

    response = httpx.get(emulator.base_url + EVENTS, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
