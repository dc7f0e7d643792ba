"""``meterstream run`` with the meter checks on (``meters.preflight: true``, the default):
refused at start when a fixed event name has no meter that takes it, and records Stripe
would silently drop dead-lettered with their reason instead of sent.

Real broker, real emulator over loopback, the connector as a process.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from meterstream_local.emulator.meters import parse_meter_spec
from tests.integration.harness import (
    committed,
    end_offsets,
    free_port,
    headers_of,
    produce,
    read_topic,
    run_meterstream,
    scrape,
    wait_until,
)
from tests.integration.stripe_api import deactivate_meter
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

CHECKS_ON = {"preflight": True, "refresh_seconds": 60}


def _record(index: int, event_name: str, customer: str = "cus_meters") -> tuple[bytes, bytes]:
    body = {"id": f"m-{event_name}-{index}", "customer": customer, "event_name": event_name}
    return customer.encode(), orjson.dumps({**body, "value": 2})


def test_run_refuses_at_start_when_a_fixed_event_name_has_no_meter(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1, meters=[parse_meter_spec("api_requests")])
    produce(world.bootstrap, world.topic, [_record(0, "api_requests")])
    config = world.config(mapping={"constant_event_name": "gpu_seconds"}, meters=CHECKS_ON)

    result = run_meterstream(
        "run", "--config", str(config), env={"STRIPE_API_KEY": "sk_test_meters"}
    )

    assert result.returncode == 2, result.stderr
    assert "gpu_seconds" in result.stderr
    assert "Traceback" not in result.stderr
    assert world.events()["accepted"] == 0
    assert committed(world.bootstrap, world.group_id, world.topic, 1) == {0: -1001}


def test_records_no_active_meter_would_take_are_dead_lettered_with_their_reason(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(
        partitions=1,  # one customer, one key: every record lands in one partition
        auto_meters=False,
        meters=[
            parse_meter_spec("api_requests"),
            parse_meter_spec("gpu_seconds:sum:cust_key:value"),  # expects other payload keys
        ],
    )
    records = [_record(i, "api_requests") for i in range(300)]
    records += [_record(i, "unmetered") for i in range(20)]
    records += [_record(i, "gpu_seconds") for i in range(10)]
    produce(world.bootstrap, world.topic, records)

    world.run_until_idle(world.config(meters=CHECKS_ON))

    events = world.events()
    assert events["accepted"] == 300
    assert world.billed() == Counter({("api_requests", "cus_meters"): 600})
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=30)
    by_reason: Counter[str] = Counter()
    messages: dict[str, str] = {}
    for letter in letters:
        headers = headers_of(letter)
        reason = headers["meterstream.reason"]
        by_reason[reason] += 1
        messages[reason] = headers["meterstream.message"]
        body: dict[str, Any] = orjson.loads(letter.value())
        expected = {"unmetered": "no_active_meter", "gpu_seconds": "meter_payload_mismatch"}
        assert reason == expected[body["event_name"]], (body, reason)
    assert by_reason == Counter({"no_active_meter": 20, "meter_payload_mismatch": 10})
    assert "unmetered" in messages["no_active_meter"]
    assert "cust_key" in messages["meter_payload_mismatch"]
    ends = end_offsets(world.bootstrap, world.topic, 1)
    assert committed(world.bootstrap, world.group_id, world.topic, 1) == ends


def test_a_meter_deactivated_while_running_dead_letters_from_the_next_refresh(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(
        partitions=1, auto_meters=False, meters=[parse_meter_spec("api_requests")]
    )
    port = free_port()
    config = world.config(
        meters={"preflight": True, "refresh_seconds": 1},
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
    )
    process = world.connector(config)
    produce(world.bootstrap, world.topic, [_record(i, "api_requests") for i in range(100)])
    wait_until(lambda: world.events()["accepted"] == 100, timeout=60, what="the first 100 billed")

    [meter] = list_meters_of(world)
    deactivate_meter(world.emulator.base_url, meter["id"])

    def inactive_seen() -> bool:
        try:
            return scrape(port).get('meterstream_meters{status="inactive"}') == 1
        except httpx.HTTPError:
            return False

    wait_until(inactive_seen, timeout=30, what="the connector to list the meters again")
    produce(world.bootstrap, world.topic, [_record(i, "api_requests") for i in range(100, 150)])
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=50, timeout=60)
    assert {headers_of(m)["meterstream.reason"] for m in letters} == {"no_active_meter"}
    process.signal(signal.SIGTERM)
    assert process.wait(60) == 0, process.log_tail()
    assert world.events()["accepted"] == 100
    assert committed(world.bootstrap, world.group_id, world.topic, 1) == {0: 150}


def list_meters_of(world: World) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{world.emulator.base_url}/v1/billing/meters",
        headers={"Authorization": "Bearer sk_test_meters"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    meters: list[dict[str, Any]] = answer.json()["data"]
    return meters
