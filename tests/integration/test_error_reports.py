"""Stripe's error reports heard by the connector: counted, logged and kept once each, across
a restart and a hand-over (the cursor is rebuilt from the reports topic).

Real broker and emulator: the emulator accepts a ghost customer's events with 200, then
drops them and reports them on ``GET /v2/core/events``, as Stripe does.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.harness import (
    free_port,
    produce,
    read_topic,
    scrape,
    wait_until,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

COUNTER = 'meterstream_stripe_error_reports_total{code="meter_event_customer_not_found"}'


def _records(prefix: str, customer: str, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            customer.encode(),
            orjson.dumps(
                {
                    "id": f"{prefix}-{i}",
                    "customer": customer,
                    "event_name": "api_requests",
                    "value": 1,
                }
            ),
        )
        for i in range(count)
    ]


def test_error_reports_are_counted_logged_and_kept_once_across_a_restart_and_a_hand_over(
    world_factory: Callable[..., World],  # noqa: F811
    topic_factory: Callable[..., str],
) -> None:
    world = world_factory(partitions=1, drop_customers=["cus_ghost"])
    reports_topic = topic_factory(1, name_prefix="reports")
    port = free_port()
    config = world.config(
        stripe={"error_reports_poll_seconds": 0.5},
        kafka={"error_reports_topic": reports_topic},
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
    )

    def counted() -> float | None:
        try:
            return scrape(port).get(COUNTER)
        except httpx.HTTPError:
            return None

    first = world.connector(config)
    produce(
        world.bootstrap, world.topic, _records("a", "cus_real", 50) + _records("g", "cus_ghost", 7)
    )
    wait_until(lambda: counted() == 7, timeout=60, what="the first report to be counted")
    [kept] = read_topic(world.bootstrap, reports_topic, expect=1)
    body: dict[str, Any] = orjson.loads(kept.value())
    assert body["errors"][0]["code"] == "meter_event_customer_not_found"
    assert body["error_count"] == 7
    assert body["event_name"] is None or body["event_name"] == "api_requests"
    assert kept.key() == body["id"].encode()
    assert "Stripe dropped 7 meter events" in first.log_path.read_text()
    first.signal(signal.SIGTERM)
    assert first.wait(60) == 0, first.log_tail()

    # A new process takes over: the old report is neither counted nor kept again.
    second = world.connector(config)
    produce(world.bootstrap, world.topic, _records("h", "cus_ghost", 3))
    wait_until(lambda: counted() == 3, timeout=60, what="the new report, and only it, counted")
    kept = read_topic(world.bootstrap, reports_topic, expect=2)
    assert len(kept) == 2, "each report kept once"
    assert sorted(orjson.loads(m.value())["error_count"] for m in kept) == [3, 7]

    # A hand-over: a third member joins (no partition for it while the second holds the
    # only one), then the second leaves; the partition, and the polling, move on.
    port_third = free_port()
    third = world.connector(
        world.config(
            stripe={"error_reports_poll_seconds": 0.5},
            kafka={"error_reports_topic": reports_topic},
            metrics={"enabled": True, "host": "127.0.0.1", "port": port_third},
        )
    )
    wait_until(
        lambda: (
            "assigned" in third.log_path.read_text() or "consuming" in third.log_path.read_text()
        ),
        timeout=60,
        what="the third member to join",
    )
    second.signal(signal.SIGTERM)
    assert second.wait(60) == 0, second.log_tail()
    produce(world.bootstrap, world.topic, _records("k", "cus_ghost", 2))

    def counted_third() -> float | None:
        try:
            return scrape(port_third).get(COUNTER)
        except httpx.HTTPError:
            return None

    wait_until(
        lambda: counted_third() == 2, timeout=90, what="the new owner to count the new report"
    )
    kept = read_topic(world.bootstrap, reports_topic, expect=3)
    assert sorted(orjson.loads(m.value())["error_count"] for m in kept) == [2, 3, 7]
    third.signal(signal.SIGTERM)
    assert third.wait(60) == 0, third.log_tail()
    assert world.events()["accepted"] == 50
