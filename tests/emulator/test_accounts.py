"""Connected accounts: ``Stripe-Context`` selects the account whose meters, sessions,
events, summaries, customers and error reports a request sees; absent, the platform."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import stripe

from meterstream_local.emulator import EmulatorClient, EmulatorServer, Meter
from meterstream_local.emulator.meters import meter_id

from .support import SESSION, event, send

METERS = "/v1/billing/meters"
ACCT_A = "acct_1TenantA"
ACCT_B = "acct_1TenantB"


def _ctx(account: str) -> dict[str, str]:
    return {"Stripe-Context": account}


def _token(http: httpx.Client, account: str | None) -> str:
    response = http.post(SESSION, json={}, headers=_ctx(account) if account else None)
    assert response.status_code == 200, response.text
    token: str = response.json()["authentication_token"]
    return token


def _send(
    http: httpx.Client, token: str, account: str | None, events: list[dict[str, Any]]
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **(_ctx(account) if account else {})}
    return http.post("/v2/billing/meter_event_stream", json={"events": events}, headers=headers)


def test_events_land_only_in_the_account_named_by_the_context(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    for account, value in ((ACCT_A, 3), (ACCT_B, 5), (None, 7)):
        response = _send(http, _token(http, account), account, [event(value, customer="cus_1")])
        assert response.status_code == 200, response.text

    assert emulator.account_state(ACCT_A).totals() == {
        "api_requests": {"cus_1": {"sum": 3, "count": 1, "last": 3}}
    }
    assert emulator.account_state(ACCT_B).totals()["api_requests"]["cus_1"]["sum"] == 5
    assert emulator.state.totals()["api_requests"]["cus_1"]["sum"] == 7
    with EmulatorClient(emulator.base_url) as client:
        assert client.totals("api_requests", account=ACCT_A) == {
            "cus_1": {"sum": 3, "count": 1, "last": 3}
        }
        assert client.stats()["accounts"] == [ACCT_A, ACCT_B]
        assert client.stats(account=ACCT_B)["account"] == ACCT_B


def test_a_session_belongs_to_its_account_and_is_refused_elsewhere_not_as_expired(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    token_a = _token(http, ACCT_A)
    for wrong in (ACCT_B, None):
        response = _send(http, token_a, wrong, [event(1)])
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] != "temporary_session_expired"
        assert ACCT_A in error["message"]
    platform_token = _token(http, None)
    response = _send(http, platform_token, ACCT_A, [event(1)])
    assert response.status_code == 401
    assert "the platform account" in response.json()["error"]["message"]
    assert emulator.account_state(ACCT_A).totals() == {}
    assert emulator.state.totals() == {}
    # Expiring sessions reaches every account's.
    assert emulator.expire_sessions() == 2
    expired = _send(http, token_a, ACCT_A, [event(1)])
    assert expired.json()["error"]["type"] == "temporary_session_expired"


def test_session_expire_every_counts_each_accounts_requests(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(session_expire_every=2)
    token_a, token_b = _token(http, ACCT_A), _token(http, ACCT_B)
    assert _send(http, token_a, ACCT_A, [event(1)]).status_code == 200
    assert _send(http, token_b, ACCT_B, [event(1)]).status_code == 200
    assert _send(http, token_a, ACCT_A, [event(1)]).status_code == 401  # A's second
    assert _send(http, token_b, ACCT_B, [event(1)]).status_code == 401  # B's second


def test_each_account_has_its_own_meters_with_ids_of_its_own(
    emulator_server: EmulatorServer,
) -> None:
    with (
        EmulatorServer(meters=[Meter("api_requests")]) as emulator,
        httpx.Client(
            base_url=emulator.base_url, headers={"Authorization": "Bearer sk_test_x"}
        ) as http,
    ):
        platform = http.get(METERS).json()["data"]
        in_a = http.get(METERS, headers=_ctx(ACCT_A)).json()["data"]
        # v1 also takes the older Stripe-Account header.
        created = http.post(
            METERS,
            data={
                "display_name": "Searches",
                "event_name": "searches",
                "default_aggregation[formula]": "count",
            },
            headers={"Stripe-Account": ACCT_B},
        )
        assert created.status_code == 200, created.text
        in_b = http.get(METERS, headers=_ctx(ACCT_B)).json()["data"]
        assert [m["event_name"] for m in platform] == ["api_requests"]
        assert [m["event_name"] for m in in_a] == ["api_requests"]
        assert sorted(m["event_name"] for m in in_b) == ["api_requests", "searches"]
        assert platform[0]["id"] != in_a[0]["id"]
        # A meter is found only in its own account.
        searches = created.json()["id"]
        assert http.get(f"{METERS}/{searches}", headers=_ctx(ACCT_B)).status_code == 200
        assert http.get(f"{METERS}/{searches}", headers=_ctx(ACCT_A)).status_code == 404
        assert http.get(f"{METERS}/{searches}").status_code == 404

        # Summaries: the account's own usage under the account's meter.
        now = time.time()
        token = _token(http, ACCT_A)
        assert _send(http, token, ACCT_A, [event(4, timestamp=now - 60)]).status_code == 200
        hour = int(now // 3600) * 3600
        params = {"customer": "cus_1", "start_time": hour - 3600, "end_time": hour + 3600}
        in_a_summary = http.get(
            f"{METERS}/{in_a[0]['id']}/event_summaries", params=params, headers=_ctx(ACCT_A)
        ).json()["data"]
        assert [s["aggregated_value"] for s in in_a_summary] == [4]
        platform_summary = http.get(
            f"{METERS}/{platform[0]['id']}/event_summaries", params=params
        ).json()["data"]
        assert [s["aggregated_value"] for s in platform_summary] == [0]


def test_customers_and_error_reports_are_per_account(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(validation_delay_seconds=0)
    created = http.post("/v1/customers", data={"id": "cus_a"}, headers=_ctx(ACCT_A))
    assert created.status_code == 200
    # cus_a exists in A only: A now checks customers, the platform and B still do not.
    assert http.get("/v1/customers/cus_zz", headers=_ctx(ACCT_A)).status_code == 404
    assert http.get("/v1/customers/cus_zz").status_code == 200
    token = _token(http, ACCT_A)
    response = _send(
        http,
        token,
        ACCT_A,
        [event(1, customer="cus_a"), event(2, customer="cus_zz", identifier="zz-1")],
    )
    assert response.status_code == 200
    assert emulator.account_state(ACCT_A).totals()["api_requests"] == {
        "cus_a": {"sum": 1, "count": 1, "last": 1}
    }
    reports = http.get("/v2/core/events", headers=_ctx(ACCT_A)).json()["data"]
    assert len(reports) == 1
    assert reports[0]["context"] == ACCT_A
    assert http.get("/v2/core/events").json()["data"] == []
    send(http, _token(http, None), [event(9, customer="cus_zz")])  # the platform takes it
    assert emulator.state.totals()["api_requests"]["cus_zz"]["sum"] == 9


def test_a_context_that_is_no_account_id_is_refused(http: httpx.Client) -> None:
    response = http.post(SESSION, json={}, headers=_ctx("cus_123"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_stripe_context"
    assert http.get(METERS, headers=_ctx("acct_a/b")).status_code == 400


def test_the_official_sdk_bills_a_connected_account_through_stripe_context(
    emulator: EmulatorServer,
) -> None:
    client = stripe.StripeClient(
        "sk_test_sdk",
        base_addresses={"api": emulator.base_url, "meter_events": emulator.base_url},
        max_network_retries=0,
    )
    options: Any = {"stripe_context": ACCT_A}
    session = client.v2.billing.meter_event_session.create(options=options)
    client.v2.billing.meter_event_stream.create(
        {"events": [event(6, customer="cus_sdk")]},  # type: ignore[typeddict-item]
        {"api_key": session.authentication_token, "stripe_context": ACCT_A},
    )
    assert emulator.account_state(ACCT_A).totals()["api_requests"]["cus_sdk"]["sum"] == 6
    assert emulator.state.totals() == {}
    # The meter its first event made (auto_meters) is the account's, under its own id.
    meters = client.v1.billing.meters.list(options={"stripe_context": ACCT_A})
    assert [(m.event_name, m.id) for m in meters.data] == [
        ("api_requests", meter_id("api_requests", ACCT_A))
    ]
    assert client.v1.billing.meters.list().data == []
    # Its token without the context: refused, and not as an expired session.
    with pytest.raises(stripe.AuthenticationError):
        client.v2.billing.meter_event_stream.create(
            {"events": [event(1)]},  # type: ignore[typeddict-item]
            {"api_key": session.authentication_token},
        )
