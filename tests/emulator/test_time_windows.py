"""Meters with ``event_time_window``: Stripe keeps only the most recent event (by event
timestamp; ties: the later received) per customer per hour or day."""

from __future__ import annotations

import time

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer, EmulatorState, Meter, MeterSpecError
from meterstream_local.emulator import parse_meter_spec as spec

from .support import event, new_token, send

T0 = 1_800_000_000.0  # 08:00:00 UTC: a whole hour
METERS = "/v1/billing/meters"


def test_the_most_recent_event_per_customer_per_hour_is_kept() -> None:
    state = EmulatorState([Meter("gauge", event_time_window="hour")], now=T0)
    state.accept(
        [
            ("gauge", "cus_1", 5, T0 + 600, "a"),
            ("gauge", "cus_1", 9, T0 + 1800, "b"),  # the most recent of hour 0
            ("gauge", "cus_1", 7, T0 + 1200, "c"),  # received later, but older
            ("gauge", "cus_2", 3, T0 + 60, "d"),
            ("gauge", "cus_1", 4, T0 + 3600, "e"),  # the next hour
        ],
        T0 + 3700,
    )
    hours = [(int(T0), int(T0) + 3600), (int(T0) + 3600, int(T0) + 7200)]

    assert [row[2] for row in state.summaries("gauge", "cus_1", hours, "sum")] == [9, 4]
    assert state.totals()["gauge"] == {
        "cus_1": {"sum": 13, "count": 2, "last": 4},
        "cus_2": {"sum": 3, "count": 1, "last": 3},
    }
    assert state.events_accepted == 5  # all accepted (and deduplicated); two overwritten


def test_a_tie_goes_to_the_later_received_and_a_cancel_empties_the_window() -> None:
    state = EmulatorState([Meter("gauge", event_time_window="day")], now=T0)
    state.accept([("gauge", "cus_1", 5, T0, "first")], T0)
    state.accept([("gauge", "cus_1", 8, T0, "second")], T0)

    assert state.totals()["gauge"]["cus_1"] == {"sum": 8, "count": 1, "last": 8}
    assert state.cancel("gauge", "first", T0) is None  # overwritten already: nothing moves
    assert state.totals()["gauge"]["cus_1"]["sum"] == 8
    assert state.cancel("gauge", "second", T0) is None
    assert state.totals()["gauge"] == {}


def test_day_windows_are_utc_days() -> None:
    day = T0 // 86_400 * 86_400
    state = EmulatorState([Meter("gauge", event_time_window="day")], now=T0)
    state.accept(
        [
            ("gauge", "cus_1", 1, day + 10, "a"),
            ("gauge", "cus_1", 2, day + 86_399, "b"),
            ("gauge", "cus_1", 3, day + 86_400, "c"),
        ],
        T0,
    )

    assert state.totals()["gauge"]["cus_1"] == {"sum": 5, "count": 2, "last": 3}


def test_windows_from_specs_files_and_the_create_endpoint(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    assert spec("gauge:last:::hour").event_time_window == "hour"
    assert spec("gauge").event_time_window is None
    with pytest.raises(MeterSpecError, match="event_time_window"):
        spec("gauge:sum:::week")

    created = http.post(
        METERS,
        data={
            "display_name": "Seats",
            "event_name": "seats",
            "default_aggregation[formula]": "sum",
            "event_time_window": "day",
        },
    )
    bad = http.post(
        METERS,
        data={
            "display_name": "x",
            "event_name": "x",
            "default_aggregation[formula]": "sum",
            "event_time_window": "minute",
        },
    )

    assert created.status_code == 200, created.text
    assert created.json()["event_time_window"] == "day"
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "event_time_window"
    listed = {m["event_name"]: m for m in http.get(METERS).json()["data"]}
    assert listed["seats"]["event_time_window"] == "day"


def test_summaries_over_http_reflect_the_window(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    meter = emulator.add_meter(Meter("seats", event_time_window="hour"))
    hour = int(time.time()) // 3600 * 3600 - 3 * 3600
    token = new_token(http)
    events = [event(v, name="seats", timestamp=hour + 60 * v) for v in (10, 30, 20)]

    assert send(http, token, events).status_code == 200

    body = http.get(
        f"{METERS}/{meter.id}/event_summaries",
        params={"customer": "cus_1", "start_time": hour, "end_time": hour + 3600},
    ).json()
    assert body["data"][0]["aggregated_value"] == 30
    assert emulator.stats()["meters"]["seats"]["customers"]["cus_1"]["count"] == 1
