"""Aggregation end to end (issue 16): sum, last and count meters in one topic billed exactly
per customer and per hour with far fewer events, an aggregate Stripe refuses dead-letters
every record it summed, and a windowed meter's records are dead-lettered, not half-billed.

One connector run serves every assertion (the suite's time is shared). Real broker, real
emulator over loopback, the connector as a process.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from connector.block_range import BlockRange
from connector.timestamps import format_rfc3339_ms
from meterstream_local.emulator.meters import parse_meter_spec
from tests.integration.aggregation_usage import (
    AGGREGATION,
    HOUR,
    METERS,
    METERS_ON,
    SUM,
    assert_billed_exactly,
    usage,
)
from tests.integration.harness import (
    free_port,
    headers_of,
    produce,
    read_topic,
    run_meterstream,
    scrape_when_up,
    wait_until,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

WINDOWED = "agg_running_total"
REFUSED_CUSTOMER = "cus_unknown_to_stripe"


def test_sum_last_count_refused_aggregate_and_windowed_meter_in_one_run(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    expected = usage(1500, customers=4, hours=1.5)
    good_customers = {customer for _meter, customer in expected.totals} | {
        customer for customer, _hour in expected.latest
    }
    world = world_factory(
        partitions=2,
        auto_meters=False,
        meters=[*METERS, parse_meter_spec(f"{WINDOWED}:last:::hour")],
        # Stripe refuses (400) events of customers it does not know: one aggregate.
        customers=frozenset(good_customers),
        sync_validation=True,
    )
    refused = [
        (
            REFUSED_CUSTOMER.encode(),
            orjson.dumps(
                {"id": f"ref-{i}", "event_name": SUM, "customer": REFUSED_CUSTOMER, "value": 3}
            ),
        )
        for i in range(25)
    ]
    windowed = [
        (
            b"cus_agg0",
            orjson.dumps(
                {"id": f"win-{i}", "event_name": WINDOWED, "customer": "cus_agg0", "value": i}
            ),
        )
        for i in range(10)
    ]
    records = expected.records + refused + windowed
    assert produce(world.bootstrap, world.topic, records) == len(records)

    aggregation = {**AGGREGATION, "bucket_seconds": 300}
    config = world.config(aggregation=aggregation, meters=METERS_ON)
    world.run_until_idle(config)

    assert_billed_exactly(world.emulator, expected)
    accepted = world.events()["accepted"]
    # The point of it all: 4 customers x 18 buckets of sum and last, plus 10 % count.
    assert accepted < len(expected.records) / 3, accepted
    letters = read_topic(world.bootstrap, world.dead_letter_topic, expect=35)
    reasons: Counter[str] = Counter()
    aggregates: set[str] = set()
    for letter in letters:
        headers = headers_of(letter)
        body = orjson.loads(letter.value())
        reasons[headers["meterstream.reason"]] += 1
        if body["customer"] == REFUSED_CUSTOMER:
            assert headers["meterstream.reason"] == "rejected_by_stripe"
            aggregates.add(headers["meterstream.aggregate_identifier"])
            assert headers["meterstream.event_identifier"] == body["id"]
        else:
            assert body["event_name"] == WINDOWED
            assert headers["meterstream.reason"] == "windowed_meter"
            assert "hour" in headers["meterstream.message"]
    assert reasons == Counter({"rejected_by_stripe": 25, "windowed_meter": 10})
    # 25 records, no timestamp: they share one minute unless a block boundary cuts them.
    assert 1 <= len(aggregates) <= 3, aggregates
    world.assert_all_committed()

    # reconcile works unchanged: the sums are the same either way (whole hours, not recent).
    end = int(time.time() - 600) // HOUR * HOUR
    start, stop = (format_rfc3339_ms(t)[:19] + "Z" for t in (end - HOUR, end))
    result = run_meterstream(
        *("reconcile", "--config", str(config), "--start", start, "--end", stop),
        env={"STRIPE_API_KEY": "sk_test_meterstream"},
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pairs match" in result.stdout.splitlines()[-1]


def blocks_in_doubt(world: World) -> dict[int, BlockRange]:
    """The block ranges the group's committed offsets carry in their metadata, by partition."""
    reader = Consumer(
        {
            "bootstrap.servers": world.bootstrap,
            "group.id": world.group_id,
            "enable.auto.commit": False,
        }
    )
    try:
        wanted = [TopicPartition(world.topic, p) for p in range(world.partitions)]
        found = reader.committed(wanted, timeout=10)
    finally:
        reader.close()
    ranges = {tp.partition: BlockRange.decode(tp.metadata, tp.offset) for tp in found}
    return {partition: block for partition, block in ranges.items() if block is not None}


def test_a_rebalance_moves_a_partition_mid_block_and_its_new_owner_re_forms_it(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """Stripe is down while the first member has made its blocks durable (their ranges in
    the commit metadata) but has none of them accepted; a second member joins and takes a
    partition mid-block. It re-forms that very block from the metadata; once Stripe is back
    every (meter, customer) and hour is billed exactly, and everything is committed."""
    world = world_factory(partitions=2, auto_meters=False, meters=METERS, outage=True)
    expected = usage(1200, customers=8, hours=1.0)
    assert produce(world.bootstrap, world.topic, expected.records) == len(expected.records)
    config = world.config(
        aggregation=AGGREGATION,
        meters=METERS_ON,
        logging={"level": "INFO"},
        kafka={"consumer": {"session.timeout.ms": 3000, "heartbeat.interval.ms": 500}},
    )

    first = world.connector(config, until_idle=1.5)
    in_doubt = wait_until(
        lambda: (found := blocks_in_doubt(world)) and len(found) == world.partitions and found,
        timeout=60,
        what="both partitions' first blocks made durable while Stripe is down",
    )
    assert world.events()["accepted"] == 0, "Stripe is down: nothing of the blocks was billed"
    second = world.connector(config, until_idle=1.5)
    wait_until(
        lambda: "re-forming the block in doubt" in second.log_path.read_text(errors="replace"),
        timeout=60,
        what="the joining member to re-form the block it took over",
    )
    log = second.log_path.read_text(errors="replace")
    assert any(
        f"{world.topic}-{partition}: re-forming the block in doubt at offsets "
        f"{block.start}..{block.end - 1}" in log
        for partition, block in in_doubt.items()
    ), log[-2000:]
    world.emulator.configure(outage=False)

    assert first.wait(120) == 0, first.log_tail()
    assert second.wait(120) == 0, second.log_tail()
    assert_billed_exactly(world.emulator, expected)
    world.assert_all_committed()


def test_a_partition_holds_at_most_two_blocks_while_stripe_is_down_and_loses_nothing(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """Stripe is down, the backlog is ten blocks deep and the global bound far away: the
    partition holds its first block (sent, failing) and the next one (full), and takes
    nothing more, though a fetch brings far more. Once Stripe is back, the records fetched
    and not taken are read again: every figure is billed exactly, everything committed."""
    max_records = 50
    bound = 2 * max_records
    world = world_factory(partitions=1, auto_meters=False, meters=METERS, outage=True)
    expected = usage(10 * max_records, customers=4, hours=0.5)
    assert produce(world.bootstrap, world.topic, expected.records) == len(expected.records)
    port = free_port()
    config = world.config(
        # Blocks close on their size only (the backlog is never caught up while held).
        aggregation={**AGGREGATION, "max_records": max_records, "max_seconds": 60},
        meters=METERS_ON,
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        logging={"level": "DEBUG"},
    )
    consumed = f'meterstream_records_consumed_total{{topic="{world.topic}"}}'

    connector = world.connector(config, until_idle=1.5)
    wait_until(
        lambda: scrape_when_up(port).get(consumed, 0) >= bound,
        timeout=60,
        what=f"the partition's two blocks to fill ({bound} records)",
    )
    # Not a wait for an event: a window in which nothing more may be taken.
    watch_until = time.monotonic() + 3
    while time.monotonic() < watch_until:
        now = scrape_when_up(port)
        assert now[consumed] == bound, now[consumed]
        assert now["meterstream_buffered_records"] <= bound, now
    assert world.events()["accepted"] == 0, "Stripe is down"
    world.emulator.configure(outage=False)

    assert connector.wait(120) == 0, connector.log_tail()
    assert_billed_exactly(world.emulator, expected)
    world.assert_all_committed()
    # A fetch brought records past the bound: they were read again from where it stopped.
    log = connector.log_path.read_text(errors="replace")
    assert f"{world.topic}-0: a block is done, fetching again from offset {bound}" in log
