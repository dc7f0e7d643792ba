"""``meterstream reconcile`` against the real broker and the emulator: an exact run matches,
usage Stripe does not hold (a canceled event, offsets committed without billing) is named.

Expected figures are computed here from the records produced, independently of the code
under test: sums for sum meters, counts for count meters, the latest value for last.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from connector.timestamps import format_rfc3339_ms
from tests.integration.harness import end_offsets, produce, run_meterstream
from tests.integration.stripe_api import API_KEY, cancel_event, create_meter
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

ENV = {"STRIPE_API_KEY": API_KEY}
HOUR = 3600
CUSTOMERS = ("cus_alpha", "cus_bravo", "cus_charlie")


def whole_hour(epoch: float) -> int:
    return int(epoch) // HOUR * HOUR


def iso(epoch: float) -> str:
    return format_rfc3339_ms(epoch)[:19] + "Z"


def record(index: int, name: str, customer: str, value: int, at: float) -> bytes:
    body = {
        "id": f"r-{index}",
        "customer": customer,
        "event_name": name,
        "value": value,
        "timestamp": format_rfc3339_ms(at),
    }
    return orjson.dumps(body)


def reconcile(
    config: Path, start: int, end: int, *extra: str, json_path: Path | None = None
) -> tuple[int, str, str]:
    args = ["reconcile", "--config", str(config), "--start", iso(start), "--end", iso(end)]
    if json_path is not None:
        args += ["--json", str(json_path)]
    result = run_meterstream(*args, *extra, env=ENV, timeout=120)
    return result.returncode, result.stdout, result.stderr


def test_an_exact_run_matches_and_a_canceled_event_is_named(
    world_factory: Callable[..., World],  # noqa: F811
    tmp_path: Path,
) -> None:
    # Stripe's old synchronous refusals: an event without a meter is refused with 400 and
    # dead-lettered (asynchronous drops are reconciled in the test below).
    world = world_factory(partitions=2, auto_meters=False, sync_validation=True)
    url = world.emulator.base_url
    meters = {
        name: create_meter(url, name, formula=formula)["id"]
        for name, formula in (("api_requests", "sum"), ("searches", "count"), ("seats", "last"))
    }
    start = whole_hour(time.time()) - 3 * HOUR
    end = start + 2 * HOUR
    expected: dict[tuple[str, str], list[Any]] = {}  # key -> [sum, count, (time, last)]
    records: list[tuple[bytes | None, bytes]] = []
    for index in range(600):
        name = ("api_requests", "searches", "seats")[index % 3]
        customer = CUSTOMERS[(index // 3) % 3]
        value = 1 + (index * 7) % 23
        at = start + 1 + (index * 37) % 600 * 11.5  # over the two hours, shuffled
        records.append((customer.encode(), record(index, name, customer, value, at)))
        figures = expected.setdefault((name, customer), [0, 0, (0.0, 0)])
        figures[0] += value
        figures[1] += 1
        figures[2] = max(figures[2], (at, value))
    # Billed but outside the window: on neither side of the comparison.
    records.append((None, record(900, "api_requests", "cus_alpha", 1000, end + 60)))
    records.append((None, record(901, "api_requests", "cus_alpha", 1000, start - 60)))
    # Dead-lettered: refused locally, and refused by Stripe (no such meter).
    records.append((None, record(902, "api_requests", "cus_alpha", -5, start + 60)))
    records.append((None, record(903, "no_such_meter", "cus_alpha", 5, start + 60)))
    assert produce(world.bootstrap, world.topic, records) == len(records)
    world.run_until_idle(world.config())

    json_path = tmp_path / "reconcile.json"
    code, stdout, stderr = reconcile(world.config(), start, end, json_path=json_path)

    assert code == 0, stdout + stderr
    assert "warning" not in stderr
    assert stdout.splitlines()[-1].startswith(
        f"all 9 (meter, customer) pairs match over [{iso(start)}, {iso(end)})"
    )
    report = json.loads(json_path.read_text())
    assert report["matches"] is True
    assert report["kafka"]["records_read"] == len(records)
    assert report["kafka"]["dead_lettered"] == 2
    assert report["kafka"]["outside_window"] == 2
    assert report["kafka"]["unmappable"] == 0
    assert report["kafka"]["events"] == 600
    seen = {(row["event_name"], row["customer"]): row for row in report["rows"]}
    assert set(seen) == set(expected)
    for (name, customer), (total, count, (_at, last)) in expected.items():
        row = seen[(name, customer)]
        figure = {"api_requests": total, "searches": count, "seats": last}[name]
        assert (row["kafka"], row["stripe"], row["status"]) == (figure, figure, "match"), row
        assert row["meter_id"] == meters[name]

    # Stripe loses one event (canceled through the adjustments API): reconcile names it.
    canceled = 3 * 1  # index 3: api_requests for cus_bravo
    cancel_event(url, "api_requests", f"r-{canceled}")
    code, stdout, stderr = reconcile(world.config(), start, end)

    assert code == 1, stdout + stderr
    lines = stdout.splitlines()
    first = lines[1].split()  # mismatches come first, under the header
    value = 1 + (canceled * 7) % 23
    kafka_sum = expected[("api_requests", "cus_bravo")][0]
    assert first == [
        "api_requests",
        "cus_bravo",
        meters["api_requests"],
        "sum",
        str(kafka_sum),
        str(kafka_sum - value),
        f"-{value}",
        "differs",
    ]
    assert lines[-1].startswith("1 of 9 (meter, customer) pairs differ")


def test_offsets_committed_without_billing_are_named_by_customer(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    world = world_factory(partitions=1)  # meters created on first use
    now = time.time()
    records = [
        (None, record(index, "api_requests", CUSTOMERS[index % 3], 2, now - 60))
        for index in range(90)
    ]
    produce(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config())
    # More usage for one customer, its offsets committed without anything sent to Stripe.
    late = [(None, record(100 + i, "api_requests", "cus_late", 5, now - 30)) for i in range(4)]
    produce(world.bootstrap, world.topic, late)
    consumer = Consumer({"bootstrap.servers": world.bootstrap, "group.id": world.group_id})
    try:
        ends = end_offsets(world.bootstrap, world.topic, 1)
        consumer.commit(offsets=[TopicPartition(world.topic, 0, ends[0])], asynchronous=False)
    finally:
        consumer.close()

    start, end = whole_hour(now) - HOUR, whole_hour(now) + HOUR
    code, stdout, stderr = reconcile(
        world.config(), start, end, "--event-name", "api_requests", "--customer", "cus_nobody"
    )

    assert code == 1, stdout + stderr
    assert "warning: --end is less than 10 minutes ago" in stderr
    rows = [line.split() for line in stdout.splitlines()[1:-1]]
    assert rows[0][:2] == ["api_requests", "cus_late"]
    assert rows[0][4:] == ["20", "0", "-20", "differs"]
    statuses = {row[1]: row[-1] for row in rows}
    assert statuses == {
        "cus_late": "differs",
        "cus_alpha": "match",
        "cus_bravo": "match",
        "cus_charlie": "match",
        "cus_nobody": "match",  # asked for: nothing on either side
    }


def test_a_window_that_is_not_whole_hours_is_a_bad_invocation(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("kafka: {topics: [usage]}\n")
    result = run_meterstream(
        "reconcile",
        "--config",
        str(config),
        "--start",
        "2026-12-01T00:30:00Z",
        "--end",
        "2026-12-02T00:00:00Z",
        env=ENV,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "--start" in line
    assert "not a whole hour" in line
    assert "2026-12-01T00:00:00Z" in line, "the message suggests the hour before"

    result = run_meterstream(
        "reconcile",
        "--config",
        str(config),
        "--start",
        "2026-12-02T00:00:00Z",
        "--end",
        "2026-12-01T00:00:00Z",
        env=ENV,
    )
    assert result.returncode == 2
    assert "--end: must be after --start" in result.stderr


def test_events_stripe_dropped_after_its_200_are_named_by_customer(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """The emulator accepts a ghost customer's events, then drops them, as Stripe does for
    a customer that does not exist: every metric of the run is green, reconcile is not."""
    world = world_factory(partitions=1, drop_customers=["cus_ghost"])
    now = time.time()
    customers = [*CUSTOMERS, "cus_ghost"]
    records = [
        (None, record(index, "api_requests", customers[index % 4], 3, now - 60))
        for index in range(80)
    ]
    produce(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config())
    assert world.events()["accepted"] == 60  # the ghost's 20 were answered 200, then dropped

    start, end = whole_hour(now) - HOUR, whole_hour(now) + HOUR
    code, stdout, stderr = reconcile(world.config(), start, end)

    assert code == 1, stdout + stderr
    rows = [line.split() for line in stdout.splitlines()[1:-1]]
    assert rows[0][:2] == ["api_requests", "cus_ghost"]
    assert rows[0][4:] == ["60", "0", "-60", "differs"]
    assert {row[1]: row[-1] for row in rows[1:]} == dict.fromkeys(CUSTOMERS, "match")
