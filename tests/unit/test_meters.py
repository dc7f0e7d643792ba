"""The meters catalog: Stripe's meter objects read, the preflight lines, per-event checks and
the refresh policy (pure logic: the listing is a stub, the clock is a variable)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from connector import metrics
from connector.config import MappingConfig
from connector.errors import AuthenticationError, BackoffError, StripeError
from connector.meters import Meter, MeterCatalog, describe
from connector.stripe_v1 import translate


def stripe_meter(
    event_name: str,
    *,
    formula: str = "sum",
    customer_key: str = "stripe_customer_id",
    value_key: str = "value",
    status: str = "active",
    window: str | None = None,
) -> dict[str, Any]:
    return {
        "id": f"mtr_{event_name}",
        "object": "billing.meter",
        "event_name": event_name,
        "status": status,
        "customer_mapping": {"type": "by_id", "event_payload_key": customer_key},
        "default_aggregation": {"formula": formula},
        "value_settings": {"event_payload_key": value_key},
        "event_time_window": window,
    }


def meter(event_name: str, **kwargs: Any) -> Meter:
    return Meter.from_stripe(stripe_meter(event_name, **kwargs))


def test_a_stripe_meter_object_is_read_with_its_keys_and_formula() -> None:
    read = Meter.from_stripe(
        stripe_meter("tokens", formula="last", customer_key="cust", value_key="n", window="hour")
    )
    assert read == Meter(
        id="mtr_tokens",
        event_name="tokens",
        status="active",
        formula="last",
        customer_payload_key="cust",
        value_payload_key="n",
        event_time_window="hour",
    )
    assert read.active
    bare = Meter.from_stripe({"id": "mtr_1", "event_name": "x", "status": "inactive"})
    assert (bare.customer_payload_key, bare.value_payload_key, bare.formula) == (
        "stripe_customer_id",
        "value",
        "sum",
    )
    assert not bare.active
    with pytest.raises(ValueError, match="unknown formula"):
        Meter.from_stripe(stripe_meter("x", formula="max"))
    with pytest.raises(ValueError, match="without id"):
        Meter.from_stripe({"event_name": "x"})


def test_preflight_accepts_a_constant_event_name_whose_meter_reads_the_sent_keys() -> None:
    catalog = MeterCatalog([meter("api_requests")])
    assert catalog.problems(MappingConfig(constant_event_name="api_requests")) == []


def test_preflight_checks_nothing_when_event_names_come_from_records() -> None:
    assert MeterCatalog([]).problems(MappingConfig()) == []


def test_preflight_names_a_constant_event_name_without_a_meter_and_the_fix() -> None:
    [line] = MeterCatalog([meter("other")]).problems(MappingConfig(constant_event_name="api_calls"))
    assert line.startswith("mapping.constant_event_name: no_active_meter:")
    assert "'api_calls'" in line
    assert "create the meter in the Dashboard" in line


def test_preflight_names_an_inactive_meter_and_says_reactivate() -> None:
    catalog = MeterCatalog([meter("api_requests", status="inactive")])
    [line] = catalog.problems(MappingConfig(constant_event_name="api_requests"))
    assert "mtr_api_requests" in line
    assert "inactive" in line
    assert "reactivate the meter in the Dashboard" in line


def test_preflight_names_the_customer_key_the_meter_expects_and_the_one_sent() -> None:
    catalog = MeterCatalog([meter("api_requests", customer_key="cust_key")])
    [line] = catalog.problems(MappingConfig(constant_event_name="api_requests"))
    assert line.startswith("mapping.customer_payload_key: meter_payload_mismatch:")
    for part in ("mtr_api_requests", "'api_requests'", "'cust_key'", "'stripe_customer_id'"):
        assert part in line
    assert line.endswith("set mapping.customer_payload_key to 'cust_key'")


def test_preflight_checks_fan_out_entries_with_their_own_overrides() -> None:
    catalog = MeterCatalog(
        [
            meter("input_tokens", value_key="tokens"),
            meter("output_tokens", customer_key="cust"),
            meter("requests", formula="count", value_key="ignored"),
        ]
    )
    mapping = MappingConfig(
        constant_event_name="ignored_with_fan_out",
        fan_out=[
            {"event_name": "input_tokens", "value": "usage.input"},
            {
                "event_name": "output_tokens",
                "value": "usage.output",
                "customer_payload_key": "cust",
            },
            {"event_name": "requests", "value": "usage.requests"},
            {"event_name": "missing", "value": "usage.missing"},
        ],
    )
    lines = catalog.problems(mapping)
    assert len(lines) == 2, lines
    assert lines[0].startswith("mapping.fan_out.0.value_payload_key: meter_payload_mismatch:")
    assert "expects the value under 'tokens', the config sends it under 'value'" in lines[0]
    assert lines[0].endswith("set mapping.fan_out.0.value_payload_key to 'tokens'")
    # The count meter's value key is never checked; the override of entry 1 matches.
    assert lines[1].startswith("mapping.fan_out.3.event_name: no_active_meter:")


def test_both_keys_wrong_give_two_lines() -> None:
    catalog = MeterCatalog([meter("api_requests", customer_key="c", value_key="v")])
    keys = [
        line.split(":")[0]
        for line in catalog.problems(MappingConfig(constant_event_name="api_requests"))
    ]
    assert keys == ["mapping.customer_payload_key", "mapping.value_payload_key"]


def test_check_refuses_unknown_inactive_and_mismatched_events_and_passes_good_ones() -> None:
    catalog = MeterCatalog(
        [
            meter("api_requests"),
            meter("old", status="inactive"),
            meter("custom", customer_key="cust_key"),
            meter("seats", formula="count", value_key="whatever"),
        ]
    )
    assert catalog.check("api_requests", "stripe_customer_id", "value") is None
    assert catalog.check("seats", "stripe_customer_id", "value") is None
    unknown = catalog.check("nope", "stripe_customer_id", "value")
    assert unknown is not None
    assert unknown.reason == "no_active_meter"
    assert "'nope'" in unknown.message
    inactive = catalog.check("old", "stripe_customer_id", "value")
    assert inactive is not None
    assert inactive.reason == "no_active_meter"
    assert "inactive" in inactive.message
    mismatch = catalog.check("custom", "stripe_customer_id", "value")
    assert mismatch is not None
    assert mismatch.reason == "meter_payload_mismatch"
    assert "'cust_key'" in mismatch.message
    assert "'stripe_customer_id'" in mismatch.message


def test_a_disabled_catalog_trusts_the_mapping() -> None:
    catalog = MeterCatalog([], enabled=False)
    assert catalog.check("anything", "a", "b") is None
    assert catalog.problems(MappingConfig(constant_event_name="anything")) == []
    assert not catalog.wants_refresh


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Listing:
    """The meters Stripe would list next, or an outage."""

    def __init__(self, meters: list[Meter]) -> None:
        self.meters = meters
        self.calls = 0
        self.outage = False

    async def __call__(self) -> list[Meter]:
        self.calls += 1
        if self.outage:
            raise BackoffError("HTTP 503 from Stripe listing billing meters", cause="server_error")
        return list(self.meters)


def test_an_unknown_name_asks_for_one_early_refresh_per_period() -> None:
    clock, listing = Clock(), Listing([])
    catalog = MeterCatalog([], fetch=listing, refresh_seconds=60, clock=clock)
    assert not catalog.wants_refresh
    assert catalog.check("new_meter", "stripe_customer_id", "value") is not None
    assert catalog.wants_refresh, "an unknown name is provisional until the list is fresh"

    listing.meters = [meter("new_meter")]
    assert asyncio.run(catalog.refresh())
    assert listing.calls == 1
    assert catalog.check("new_meter", "stripe_customer_id", "value") is None

    # Another unknown name within the period: a final refusal, no refresh.
    clock.now += 30
    assert catalog.check("other", "stripe_customer_id", "value") is not None
    assert not catalog.wants_refresh
    # After the period the list is due anyway, and the refusal is provisional again.
    clock.now += 31
    assert catalog.wants_refresh


def test_final_refusals_are_counted_once_by_reason() -> None:
    counter = metrics.METER_PREFLIGHT_FAILURES.labels("no_active_meter")
    before = counter._value.get()
    clock, listing = Clock(), Listing([])
    catalog = MeterCatalog([], fetch=listing, refresh_seconds=60, clock=clock)
    catalog.check("x", "stripe_customer_id", "value")  # provisional: a refresh is due
    assert counter._value.get() == before
    asyncio.run(catalog.refresh())
    catalog.check("x", "stripe_customer_id", "value")  # final
    assert counter._value.get() == before + 1


def test_a_failed_refresh_keeps_the_old_list_and_keeps_refusals_provisional() -> None:
    clock, listing = Clock(), Listing([meter("api_requests")])
    catalog = MeterCatalog([meter("api_requests")], fetch=listing, refresh_seconds=60, clock=clock)
    listing.outage = True
    catalog.check("new_meter", "stripe_customer_id", "value")
    assert not asyncio.run(catalog.refresh())
    assert catalog.problem is not None
    assert "503" in catalog.problem
    assert catalog.check("api_requests", "stripe_customer_id", "value") is None
    assert catalog.wants_refresh, "the caller must hold the unknown-name record, not DLQ it"
    listing.outage = False
    assert asyncio.run(catalog.refresh())
    assert catalog.problem is None
    assert not catalog.wants_refresh


def test_the_list_is_due_after_refresh_seconds() -> None:
    clock, listing = Clock(), Listing([meter("a")])
    catalog = MeterCatalog([], fetch=listing, refresh_seconds=60, clock=clock)
    clock.now += 59.9
    assert not catalog.wants_refresh
    clock.now += 0.2
    assert catalog.wants_refresh
    asyncio.run(catalog.refresh())
    assert [m.event_name for m in catalog.meters] == ["a"]
    assert metrics.METERS.labels("active")._value.get() == 1


def test_describe_aligns_the_meters_in_columns() -> None:
    lines = describe([meter("api_requests"), meter("seats", formula="count", status="inactive")])
    assert lines[0].split() == ["EVENT", "NAME", "METER", "ID", "STATUS", "FORMULA", "CUSTOMER",
                                "KEY", "VALUE", "KEY"]  # fmt: skip
    assert lines[1].split() == [
        "api_requests",
        "mtr_api_requests",
        "active",
        "sum",
        "stripe_customer_id",
        "value",
    ]
    assert lines[2].split()[-1] == "-", "a count meter reads no value"
    assert len({line.index("mtr_") for line in lines[1:]}) == 1


def response(status: int, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(
        status, json=body, headers=headers, request=httpx.Request("GET", "http://x")
    )


@pytest.mark.parametrize("status", [429, 500, 502, 503, 409])
def test_outages_translate_to_backoff(status: int) -> None:
    error = translate(response(status, {"error": {"message": "busy"}}, **{"Retry-After": "2"}), "x")
    assert isinstance(error, BackoffError)
    assert error.retry_after == 2.0
    assert error.cause == ("rate_limited" if status == 429 else "server_error")


@pytest.mark.parametrize(("status", "hint"), [(401, "STRIPE_API_KEY"), (403, "permission")])
def test_refused_keys_translate_to_authentication_errors(status: int, hint: str) -> None:
    error = translate(
        response(
            status, {"error": {"message": "Invalid API Key provided."}}, **{"Request-Id": "r"}
        ),
        "listing billing meters",
    )
    assert isinstance(error, AuthenticationError)
    assert hint in str(error)
    assert "Invalid API Key provided." in str(error)
    assert "listing billing meters" in str(error)
    assert error.request_id == "r"


def test_a_missing_object_is_a_plain_error_and_a_missing_url_a_config_one() -> None:
    missing = translate(
        response(404, {"error": {"code": "resource_missing", "message": "No such meter"}}), "x"
    )
    assert type(missing) is StripeError
    wrong_base = translate(response(404, {"error": {"message": "Unrecognized request URL"}}), "x")
    assert isinstance(wrong_base, AuthenticationError)
    assert "stripe.api_base" in str(wrong_base)


def test_a_windowed_meter_is_refused_at_start_naming_the_meter_and_its_window() -> None:
    catalog = MeterCatalog([meter("gauge", formula="last", window="hour")])
    [line] = catalog.problems(MappingConfig(constant_event_name="gauge"))
    assert line.startswith("mapping.constant_event_name: windowed_meter:")
    for part in ("mtr_gauge", "'hour'", "meters.allow_windowed"):
        assert part in line
    allowed = MeterCatalog([meter("gauge", window="day")], allow_windowed=True)
    assert allowed.problems(MappingConfig(constant_event_name="gauge")) == []


def test_events_of_a_windowed_meter_are_refused_unless_allowed() -> None:
    meters = [meter("gauge", window="day"), meter("plain")]
    problem = MeterCatalog(meters).check("gauge", "stripe_customer_id", "value")
    assert problem is not None
    assert problem.reason == "windowed_meter"
    assert "'day'" in problem.message
    assert MeterCatalog(meters).check("plain", "stripe_customer_id", "value") is None
    allowed = MeterCatalog(meters, allow_windowed=True)
    assert allowed.check("gauge", "stripe_customer_id", "value") is None
