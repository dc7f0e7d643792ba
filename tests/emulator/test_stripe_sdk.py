"""Fidelity: the official ``stripe`` SDK, pointed at the emulator, sees Stripe.

If the emulator's bodies, status codes or shapes drifted from Stripe's, the SDK would
raise the wrong class or fail to parse; these tests pin that it does not.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import stripe
from stripe.events import V1BillingMeterErrorReportTriggeredEvent

from meterstream_local.emulator import EmulatorServer, Meter

from .support import event

ERROR_REPORT = "v1.billing.meter.error_report_triggered"


@pytest.fixture
def client(emulator: EmulatorServer) -> stripe.StripeClient:
    return stripe.StripeClient(
        "sk_test_sdk",
        base_addresses={"api": emulator.base_url, "meter_events": emulator.base_url},
        max_network_retries=0,  # the SDK would retry 5xx with sleeps; each test sees one answer
    )


@pytest.fixture
def session(client: stripe.StripeClient) -> Any:
    return client.v2.billing.meter_event_session.create()


def _stream(client: stripe.StripeClient, session: Any, events: list[dict[str, Any]]) -> None:
    client.v2.billing.meter_event_stream.create(
        {"events": events},  # type: ignore[typeddict-item]
        {"api_key": session.authentication_token},
    )


def test_create_a_session(session: Any) -> None:
    assert isinstance(session, stripe.v2.billing.MeterEventSession)
    assert session.object == "v2.billing.meter_event_session"
    assert session.id.startswith("mes_")
    assert session.authentication_token
    assert session.livemode is False
    assert session.expires_at > session.created  # RFC 3339 strings compare in time order


def test_send_batches(emulator: EmulatorServer, client: stripe.StripeClient, session: Any) -> None:
    for batch in range(3):
        _stream(client, session, [event(batch + 1, customer=f"cus_{i % 2}") for i in range(100)])

    totals = emulator.state.totals()["api_requests"]
    assert totals["cus_0"]["count"] + totals["cus_1"]["count"] == 300
    assert totals["cus_0"]["sum"] + totals["cus_1"]["sum"] == 100 * (1 + 2 + 3)


def test_expired_session_raises_temporary_session_expired(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    _stream(client, session, [event()])
    emulator.expire_sessions()

    with pytest.raises(stripe.TemporarySessionExpiredError) as caught:
        _stream(client, session, [event()])

    assert caught.value.http_status == 401
    assert caught.value.code == "billing_meter_event_session_expired"
    assert caught.value.request_id is not None
    assert caught.value.request_id.startswith("req_")
    _stream(client, client.v2.billing.meter_event_session.create(), [event()])


def test_session_lifetime_expiry_raises_temporary_session_expired(
    emulator: EmulatorServer, client: stripe.StripeClient
) -> None:
    emulator.configure(session_ttl_seconds=30)
    short = client.v2.billing.meter_event_session.create()
    emulator.configure(clock_offset_seconds=31)

    with pytest.raises(stripe.TemporarySessionExpiredError):
        _stream(client, short, [event()])


def test_101_events_raise_invalid_request(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _stream(client, session, [event() for _ in range(101)])

    assert caught.value.http_status == 400
    assert caught.value.code == "array_too_long"
    assert emulator.state.events_accepted == 0


def test_a_malformed_event_raises_invalid_request(
    client: stripe.StripeClient, session: Any
) -> None:
    with pytest.raises(stripe.InvalidRequestError) as caught:
        _stream(client, session, [event(timestamp="not a date")])

    assert caught.value.code == "invalid_timestamp"


def test_an_event_failing_validation_is_accepted_and_reported_later(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    emulator.configure(validation_delay_seconds=0)

    _stream(client, session, [event("12.5", identifier="decimal-1"), event(3)])  # no exception

    [report] = client.v2.core.events.list({"types": [ERROR_REPORT]}).data
    fetched = client.v2.core.events.retrieve(report.id)
    assert report.type == ERROR_REPORT
    assert isinstance(fetched, V1BillingMeterErrorReportTriggeredEvent)
    [error_type] = fetched.data.reason.error_types
    assert error_type.code == "meter_event_invalid_value"
    assert error_type.sample_errors[0].request.identifier == "decimal-1"
    assert emulator.state.totals()["api_requests"]["cus_1"]["sum"] == 3


def test_a_bad_api_key_raises_authentication_error(emulator: EmulatorServer) -> None:
    bad = stripe.StripeClient(
        "pk_test_not_a_secret_key",
        base_addresses={"api": emulator.base_url, "meter_events": emulator.base_url},
    )

    with pytest.raises(stripe.AuthenticationError) as caught:
        bad.v2.billing.meter_event_session.create()
    assert caught.value.http_status == 401
    with pytest.raises(stripe.AuthenticationError):
        bad.v1.billing.meters.list()


def test_rate_limits_raise_rate_limit_error(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    emulator.configure(rate_limit_rate=1.0, retry_after_seconds=3)

    with pytest.raises(stripe.RateLimitError) as caught:
        _stream(client, session, [event()])

    assert caught.value.http_status == 429
    assert caught.value.headers is not None
    assert caught.value.headers["retry-after"] == "3"


def test_server_errors_raise_api_error(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    emulator.configure(failures="1:500")

    with pytest.raises(stripe.APIError) as caught:
        _stream(client, session, [event()])

    assert caught.value.http_status == 500


def test_list_meters(emulator: EmulatorServer, client: stripe.StripeClient) -> None:
    for name in ("alpha", "beta", "gamma"):
        emulator.add_meter(Meter(name, formula="count"))

    page = client.v1.billing.meters.list({"status": "active", "limit": 2})
    everything = list(page.auto_paging_iter())

    assert len(page.data) == 2
    assert page.has_more is True
    assert sorted(m.event_name for m in everything) == ["alpha", "beta", "gamma"]
    meter = everything[0]
    assert isinstance(meter, stripe.billing.Meter)
    assert meter.default_aggregation.formula == "count"
    assert meter.customer_mapping.event_payload_key == "stripe_customer_id"
    assert client.v1.billing.meters.retrieve(meter.id).event_name == meter.event_name


def test_read_event_summaries(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    meter = emulator.add_meter(Meter("api_requests"))
    hour = int(time.time()) // 3600 * 3600 - 3 * 3600
    _stream(
        client,
        session,
        [
            event(4, timestamp=hour + 60),
            event(6, timestamp=hour + 3600 + 5),
            event(50, customer="cus_2", timestamp=hour + 60),
        ],
    )

    whole = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": "cus_1", "start_time": hour, "end_time": hour + 3 * 3600}
    )
    hourly = client.v1.billing.meters.event_summaries.list(
        meter.id,
        {
            "customer": "cus_1",
            "start_time": hour,
            "end_time": hour + 3 * 3600,
            "value_grouping_window": "hour",
        },
    )

    [summary] = whole.data
    assert isinstance(summary, stripe.billing.MeterEventSummary)
    assert summary.aggregated_value == 10
    assert summary.meter == meter.id
    assert [(s.start_time - hour, s.aggregated_value) for s in hourly.data] == [(0, 4), (3600, 6)]


def test_cancel_an_event_with_an_adjustment(
    emulator: EmulatorServer, client: stripe.StripeClient, session: Any
) -> None:
    _stream(client, session, [event(8, identifier="mistake"), event(2, identifier="fine")])

    adjustment = client.v2.billing.meter_event_adjustments.create(
        {"event_name": "api_requests", "type": "cancel", "cancel": {"identifier": "mistake"}}
    )

    assert adjustment.object == "v2.billing.meter_event_adjustment"
    assert adjustment.cancel.identifier == "mistake"
    assert emulator.state.totals()["api_requests"]["cus_1"]["sum"] == 2


def test_deactivate_and_reactivate_a_meter(
    emulator: EmulatorServer, client: stripe.StripeClient
) -> None:
    meter = emulator.add_meter(Meter("api_requests"))

    deactivated = client.v1.billing.meters.deactivate(meter.id)
    inactive = client.v1.billing.meters.list({"status": "inactive"})
    reactivated = client.v1.billing.meters.reactivate(meter.id)

    assert isinstance(deactivated, stripe.billing.Meter)
    assert deactivated.status == "inactive"
    assert deactivated.status_transitions.deactivated_at is not None
    assert [m.id for m in inactive.data] == [meter.id]
    assert reactivated.status == "active"
    with pytest.raises(stripe.InvalidRequestError) as caught:
        client.v1.billing.meters.deactivate("mtr_test_missing")
    assert caught.value.http_status == 404
