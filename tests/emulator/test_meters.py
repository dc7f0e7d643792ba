"""v1 meters and event summaries (form-encoded, Unix seconds), and v2 adjustments."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterstream_local.emulator import EmulatorServer, Meter, MeterSpecError, load_meters_file
from meterstream_local.emulator import parse_meter_spec as spec

from .support import error_of, event, new_token, send

METERS = "/v1/billing/meters"


def _minute(offset_minutes: int = 0) -> int:
    """A whole minute in the recent past (events there are inside Stripe's window)."""
    return (int(time.time()) // 3600 * 3600) - 2 * 3600 + offset_minutes * 60


def test_meters_are_listed_in_a_v1_envelope(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.add_meter(Meter("api_requests"))
    emulator.add_meter(Meter("tokens", formula="last", customer_key="acct", value_key="n"))

    response = http.get(METERS, params={"status": "active", "limit": 100})

    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    body = response.json()
    assert body["object"] == "list"
    assert body["has_more"] is False
    assert body["url"] == METERS
    tokens = next(m for m in body["data"] if m["event_name"] == "tokens")
    assert tokens["object"] == "billing.meter"
    assert tokens["id"].startswith("mtr_")
    assert tokens["status"] == "active"
    assert tokens["default_aggregation"] == {"formula": "last"}
    assert tokens["customer_mapping"] == {"event_payload_key": "acct", "type": "by_id"}
    assert tokens["value_settings"] == {"event_payload_key": "n"}
    assert isinstance(tokens["created"], int)
    assert abs(tokens["created"] - time.time()) < 60  # Unix seconds, not milliseconds
    assert tokens["livemode"] is False


def test_meters_page_with_limit_and_starting_after(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    for name in ("a", "b", "c", "d", "e"):
        emulator.add_meter(Meter(name))

    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        body = http.get(METERS, params=params).json()
        seen += [m["event_name"] for m in body["data"]]
        if not body["has_more"]:
            break
        params = {"limit": 2, "starting_after": body["data"][-1]["id"]}

    assert sorted(seen) == ["a", "b", "c", "d", "e"]
    assert len(seen) == 5


def test_status_filter_and_bad_parameters(emulator: EmulatorServer, http: httpx.Client) -> None:
    meter = emulator.add_meter(Meter("old"))
    emulator.add_meter(Meter("new"))
    http.post(f"{METERS}/{meter.id}/deactivate")

    active = http.get(METERS, params={"status": "active"}).json()["data"]
    inactive = http.get(METERS, params={"status": "inactive"}).json()["data"]

    assert [m["event_name"] for m in active] == ["new"]
    assert [m["event_name"] for m in inactive] == ["old"]
    bad = http.get(METERS, params={"limit": "lots"})
    assert bad.status_code == 400
    assert error_of(bad)["param"] == "limit"


def test_v1_endpoints_need_an_api_key(emulator: EmulatorServer) -> None:
    missing = httpx.get(emulator.base_url + METERS)
    wrong = httpx.get(emulator.base_url + METERS, headers={"Authorization": "Bearer nope"})
    basic = httpx.get(emulator.base_url + METERS, auth=("sk_test_basic", ""))

    assert missing.status_code == 401
    assert wrong.status_code == 401
    assert error_of(wrong)["type"] == "invalid_request_error"
    assert basic.status_code == 200  # v1 also takes the key as Basic auth, as Stripe does


def test_create_and_retrieve_a_meter_with_form_parameters(http: httpx.Client) -> None:
    created = http.post(
        METERS,
        data={
            "display_name": "Tokens",
            "event_name": "tokens",
            "default_aggregation[formula]": "count",
            "customer_mapping[event_payload_key]": "account",
            "customer_mapping[type]": "by_id",
        },
    )

    assert created.status_code == 200, created.text
    meter = created.json()
    assert meter["display_name"] == "Tokens"
    assert meter["default_aggregation"] == {"formula": "count"}
    assert http.get(f"{METERS}/{meter['id']}").json() == meter
    duplicate = http.post(
        METERS,
        data={"display_name": "x", "event_name": "tokens", "default_aggregation[formula]": "sum"},
    )
    assert duplicate.status_code == 400
    missing = http.get(f"{METERS}/mtr_nope")
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "resource_missing"


def _summaries(http: httpx.Client, meter_id: str, **params: Any) -> httpx.Response:
    return http.get(f"{METERS}/{meter_id}/event_summaries", params=params)


@pytest.mark.parametrize(
    ("formula", "expected"),
    [("sum", 5 + 2 + 3), ("count", 3), ("last", 5)],
)
def test_event_summaries_aggregate_by_the_meters_formula(
    emulator: EmulatorServer, http: httpx.Client, formula: str, expected: int
) -> None:
    meter = emulator.add_meter(Meter("usage", formula=formula))  # type: ignore[arg-type]
    token = new_token(http)
    t0 = _minute()
    events = [
        event(5, name="usage", timestamp=t0 + 50),  # the latest event, sent first
        event(2, name="usage", timestamp=t0 + 10),
        event(3, name="usage", timestamp=t0 + 65),
        event(100, name="usage", customer="cus_other", timestamp=t0 + 20),
    ]
    if formula == "last":  # "last" goes by event time, not by arrival: the 5 at t0+50 wins
        events[2] = event(1, name="usage", timestamp=t0 + 30)
    assert send(http, token, events).status_code == 200

    body = _summaries(http, meter.id, customer="cus_1", start_time=t0, end_time=t0 + 180).json()

    assert body["object"] == "list"
    [summary] = body["data"]
    assert summary["object"] == "billing.meter_event_summary"
    assert summary["aggregated_value"] == expected
    assert summary["start_time"] == t0
    assert summary["end_time"] == t0 + 180
    assert summary["meter"] == meter.id
    assert summary["livemode"] is False


def test_event_summary_windows_include_start_and_exclude_end(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    meter = emulator.add_meter(Meter("usage"))
    t0 = _minute()
    token = new_token(http)
    send(
        http,
        token,
        [event(1, name="usage", timestamp=t0), event(10, name="usage", timestamp=t0 + 60)],
    )

    def value(start: int, end: int) -> int:
        body = _summaries(http, meter.id, customer="cus_1", start_time=start, end_time=end).json()
        return int(body["data"][0]["aggregated_value"])

    assert value(t0, t0 + 60) == 1
    assert value(t0 + 60, t0 + 120) == 10
    assert value(t0 - 60, t0) == 0
    assert value(t0, t0 + 120) == 11


def test_event_summaries_grouped_by_hour_and_day(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    meter = emulator.add_meter(Meter("usage"))
    hour = int(time.time()) // 3600 * 3600 - 5 * 3600
    token = new_token(http)
    send(
        http,
        token,
        [
            event(1, name="usage", timestamp=hour + 10),
            event(2, name="usage", timestamp=hour + 3599),
            event(4, name="usage", timestamp=hour + 2 * 3600 + 1),
        ],
    )

    hourly = _summaries(
        http,
        meter.id,
        customer="cus_1",
        start_time=hour,
        end_time=hour + 4 * 3600,
        value_grouping_window="hour",
    ).json()["data"]

    assert [
        (s["start_time"] - hour, s["end_time"] - hour, s["aggregated_value"]) for s in hourly
    ] == [
        (0, 3600, 3),
        (7200, 10800, 4),
    ]
    day = hour // 86400 * 86400
    daily = _summaries(
        http,
        meter.id,
        customer="cus_1",
        start_time=day,
        end_time=day + 2 * 86400,  # the three hours may straddle midnight UTC
        value_grouping_window="day",
    ).json()["data"]
    assert sum(s["aggregated_value"] for s in daily) == 7
    assert all((s["end_time"] - s["start_time"]) == 86400 for s in daily)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start_time": 60, "end_time": 120}, "customer"),
        ({"customer": "cus_1", "end_time": 120}, "start_time"),
        ({"customer": "cus_1", "start_time": 61, "end_time": 120}, "start_time"),
        ({"customer": "cus_1", "start_time": 120, "end_time": 120}, "start_time"),
        (
            {
                "customer": "cus_1",
                "start_time": 60,
                "end_time": 3600,
                "value_grouping_window": "hour",
            },
            "start_time",
        ),
        (
            {"customer": "cus_1", "start_time": 0, "end_time": 60, "value_grouping_window": "week"},
            "value_grouping_window",
        ),
    ],
)
def test_event_summary_parameters_are_checked(
    emulator: EmulatorServer, http: httpx.Client, params: dict[str, Any], param: str
) -> None:
    meter = emulator.add_meter(Meter("usage"))

    response = _summaries(http, meter.id, **params)

    assert response.status_code == 400
    assert error_of(response)["param"] == param


def test_an_adjustment_cancels_one_event(emulator: EmulatorServer, http: httpx.Client) -> None:
    meter = emulator.add_meter(Meter("usage"))
    t0 = _minute()
    token = new_token(http)
    send(
        http,
        token,
        [
            event(5, name="usage", identifier="keep", timestamp=t0 + 1),
            event(7, name="usage", identifier="oops", timestamp=t0 + 2),
        ],
    )

    body = {"event_name": "usage", "type": "cancel", "cancel": {"identifier": "oops"}}
    response = http.post("/v2/billing/meter_event_adjustments", json=body)

    assert response.status_code == 200, response.text
    adjustment = response.json()
    assert adjustment["object"] == "v2.billing.meter_event_adjustment"
    assert adjustment["cancel"] == {"identifier": "oops"}
    summary = _summaries(http, meter.id, customer="cus_1", start_time=t0, end_time=t0 + 60)
    assert summary.json()["data"][0]["aggregated_value"] == 5
    assert emulator.state.totals()["usage"]["cus_1"] == {"sum": 5, "count": 1, "last": 5}
    again = http.post("/v2/billing/meter_event_adjustments", json=body)
    assert error_of(again)["type"] == "already_canceled"
    assert send(http, token, [event(7, name="usage", identifier="oops")]).status_code == 200
    assert emulator.state.duplicates == 1  # a canceled identifier still dedupes
    unknown = {"event_name": "usage", "type": "cancel", "cancel": {"identifier": "never"}}
    assert http.post("/v2/billing/meter_event_adjustments", json=unknown).status_code == 404


def test_meter_specs_from_the_command_line() -> None:
    assert spec("api_requests") == Meter("api_requests")
    assert spec("tokens:last") == Meter("tokens", formula="last")
    assert spec("gb:count:account") == Meter("gb", formula="count", customer_key="account")
    assert spec("gb::acct:n") == Meter("gb", customer_key="acct", value_key="n")
    for bad in ("", "x:median", "a:b:c:d:e", ":sum"):
        with pytest.raises(MeterSpecError):
            spec(bad)


def test_meters_from_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "meters.yaml"
    yaml_file.write_text(
        "meters:\n"
        "  - event_name: api_requests\n"
        "  - event_name: tokens\n"
        "    formula: last\n"
        "    customer_key: account\n"
        "    value_key: tokens\n"
        "    status: inactive\n"
    )
    json_file = tmp_path / "meters.json"
    json_file.write_text(
        '[{"event_name": "gb", "default_aggregation": {"formula": "count"},'
        ' "customer_mapping": {"event_payload_key": "acct"}}]'
    )

    assert load_meters_file(yaml_file) == [
        Meter("api_requests"),
        Meter("tokens", formula="last", customer_key="account", value_key="tokens", active=False),
    ]
    assert load_meters_file(json_file) == [Meter("gb", formula="count", customer_key="acct")]
    bad = tmp_path / "bad.yaml"
    bad.write_text("- event_name: x\n  colour: blue\n")
    with pytest.raises(MeterSpecError, match="colour"):
        load_meters_file(bad)
    with pytest.raises(MeterSpecError, match="cannot read"):
        load_meters_file(tmp_path / "missing.yaml")


def test_deactivate_and_reactivate_show_status_and_transitions(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    meter = emulator.add_meter(Meter("usage"))
    before = int(time.time())

    deactivated = http.post(f"{METERS}/{meter.id}/deactivate", data={"expand[]": "x"})

    assert deactivated.status_code == 200, deactivated.text
    body = deactivated.json()
    assert body["object"] == "billing.meter"
    assert body["id"] == meter.id
    assert body["status"] == "inactive"
    assert body["status_transitions"]["deactivated_at"] >= before
    assert body["updated"] >= before
    assert http.get(f"{METERS}/{meter.id}").json()["status"] == "inactive"
    assert [m["id"] for m in http.get(METERS, params={"status": "inactive"}).json()["data"]] == [
        meter.id
    ]
    assert http.get(METERS, params={"status": "active"}).json()["data"] == []

    reactivated = http.post(f"{METERS}/{meter.id}/reactivate").json()

    assert reactivated["status"] == "active"
    assert reactivated["status_transitions"] == {"deactivated_at": None}
    assert [m["id"] for m in http.get(METERS, params={"status": "active"}).json()["data"]] == [
        meter.id
    ]


@pytest.mark.parametrize("action", ["deactivate", "reactivate"])
def test_deactivating_an_unknown_meter_is_404(http: httpx.Client, action: str) -> None:
    response = http.post(f"{METERS}/mtr_test_nope/{action}")

    assert response.status_code == 404
    error = error_of(response)
    assert error["code"] == "resource_missing"
    assert "mtr_test_nope" in error["message"]
