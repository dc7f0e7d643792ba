"""Test-side calls to Stripe's own API (served by the emulator): meters and adjustments.

Through the public Stripe endpoints, not the emulator's internals, so these tests hold
for any local Stripe that follows the contract.
"""

from __future__ import annotations

from typing import Any

import httpx

API_KEY = "sk_test_meterstream"


def _client(base_url: str) -> httpx.Client:
    return httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    )


def create_meter(
    base_url: str,
    event_name: str,
    *,
    formula: str = "sum",
    customer_key: str | None = None,
    value_key: str | None = None,
) -> dict[str, Any]:
    """``POST /v1/billing/meters``; the created ``billing.meter``."""
    form = {
        "event_name": event_name,
        "display_name": event_name,
        "default_aggregation[formula]": formula,
    }
    if customer_key:
        form["customer_mapping[event_payload_key]"] = customer_key
        form["customer_mapping[type]"] = "by_id"
    if value_key:
        form["value_settings[event_payload_key]"] = value_key
    with _client(base_url) as client:
        response = client.post("/v1/billing/meters", data=form)
    assert response.status_code == 200, response.text
    meter: dict[str, Any] = response.json()
    return meter


def deactivate_meter(base_url: str, meter_id: str) -> None:
    """``POST /v1/billing/meters/{id}/deactivate``."""
    with _client(base_url) as client:
        response = client.post(f"/v1/billing/meters/{meter_id}/deactivate")
    assert response.status_code == 200, response.text


def cancel_event(base_url: str, event_name: str, identifier: str) -> None:
    """``POST /v2/billing/meter_event_adjustments``: cancel one event Stripe accepted."""
    with _client(base_url) as client:
        response = client.post(
            "/v2/billing/meter_event_adjustments",
            json={"event_name": event_name, "type": "cancel", "cancel": {"identifier": identifier}},
        )
    assert response.status_code == 200, response.text
