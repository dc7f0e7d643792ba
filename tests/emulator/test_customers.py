"""Customers: off by default (every customer exists), on with a list, ``POST /v1/customers``
or the ``drop_customers`` knob; unknown customers' events are accepted, then dropped."""

from __future__ import annotations

import time

import httpx
import pytest
import stripe

from meterstream_local.emulator import EmulatorServer, KnobError, Knobs

from .support import event, new_token, send

CUSTOMERS = "/v1/customers"


def _billed(emulator: EmulatorServer) -> dict[str, int]:
    return {c: t["sum"] for c, t in emulator.state.totals().get("api_requests", {}).items()}


def test_without_a_customer_list_every_customer_exists(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(validation_delay_seconds=0)

    send(http, new_token(http), [event(1, customer="cus_anyone"), event(2, customer="cus_x")])

    assert _billed(emulator) == {"cus_anyone": 1, "cus_x": 2}
    assert emulator.stats()["events"]["dropped"] == 0
    assert http.get(f"{CUSTOMERS}/cus_whoever").status_code == 200


def test_a_customer_list_drops_the_others(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(validation_delay_seconds=0, customers="cus_a, cus_b")

    response = send(
        http,
        new_token(http),
        [event(1, customer="cus_a"), event(5, customer="cus_c", identifier="c-1")],
    )

    assert response.status_code == 200
    assert _billed(emulator) == {"cus_a": 1}
    assert emulator.stats()["events"]["dropped_by_code"] == {"meter_event_customer_not_found": 1}
    [report] = emulator.state.thin_events(time.time())
    [error_type] = report.body["data"]["reason"]["error_types"]
    assert error_type["sample_errors"][0]["request"]["identifier"] == "c-1"
    assert "cus_c" in error_type["sample_errors"][0]["error_message"]
    assert http.get(f"{CUSTOMERS}/cus_c").status_code == 404


def test_creating_a_customer_turns_checks_on(emulator: EmulatorServer, http: httpx.Client) -> None:
    emulator.configure(validation_delay_seconds=0)

    given = http.post(CUSTOMERS, data={"id": "cus_given", "name": "Given"})
    generated = http.post(CUSTOMERS, data={"email": "a@example.com"})

    assert given.status_code == 200, given.text
    assert given.json()["id"] == "cus_given"
    assert given.json()["object"] == "customer"
    new_id = generated.json()["id"]
    assert new_id.startswith("cus_")
    assert http.get(f"{CUSTOMERS}/{new_id}").json()["email"] == "a@example.com"
    assert http.post(CUSTOMERS, data={"id": "cus_given"}).status_code == 400
    token = new_token(http)
    send(http, token, [event(1, customer="cus_given"), event(2, customer=new_id)])
    send(http, token, [event(4, customer="cus_stranger")])
    assert _billed(emulator) == {"cus_given": 1, new_id: 2}
    assert emulator.stats()["events"]["dropped_by_code"] == {"meter_event_customer_not_found": 1}


def test_drop_customers_accepts_then_drops_one_customers_events(
    emulator: EmulatorServer, http: httpx.Client
) -> None:
    emulator.configure(validation_delay_seconds=0, drop_customers=["cus_gone"])
    events = [event(i + 1, customer="cus_gone" if i % 2 else "cus_kept") for i in range(10)]

    assert send(http, new_token(http), events).status_code == 200

    assert _billed(emulator) == {"cus_kept": 1 + 3 + 5 + 7 + 9}
    assert emulator.stats()["events"]["dropped_by_code"] == {"meter_event_customer_not_found": 5}
    assert emulator.knobs.to_json()["drop_customers"] == ["cus_gone"]


def test_the_sdk_creates_customers(emulator: EmulatorServer) -> None:
    client = stripe.StripeClient(
        "sk_test_sdk", base_addresses={"api": emulator.base_url}, max_network_retries=0
    )

    customer = client.v1.customers.create({"name": "Ada"})

    assert isinstance(customer, stripe.Customer)
    assert client.v1.customers.retrieve(customer.id).id == customer.id
    assert emulator.knobs.customers == frozenset({customer.id})


@pytest.mark.parametrize("bad", [5, [""], ["cus_a", 3]])
def test_customer_knobs_are_checked(bad: object) -> None:
    with pytest.raises(KnobError, match="customers"):
        Knobs().replace(customers=bad)
