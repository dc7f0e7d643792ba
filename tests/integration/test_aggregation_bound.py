"""Partitions are independent at the aggregation bound (issue 16, docs/aggregation.md): one
partition held at its two blocks under a backlog never stops another from being billed.

Real broker, real emulator over loopback, the connector as a process. Stripe answers every
stream request after ``LATENCY_MS``, decided when the request arrives. Partition 0's blocks
go out one at a time, so while its first block's request waits, partition 0 is held at its
bound and has nothing billed. Partition 1's records are produced once that request is on
the wire; partition 1's request on the wire in that time (a second request in flight:
partition 0 never has two) shows that partition 1 was fetched, blocked
and sent while partition 0 was held; a connector that stopped the other partitions too
would send it only once partition 0's first block was answered. Partition 1 takes a small
fraction of a second to get there (0.06 s measured, 0.16 s with a core busy), the latency
is thirty times more: the outcome does not depend on the machine's speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from tests.integration.aggregation_usage import (
    AGGREGATION,
    HOUR,
    METERS,
    METERS_ON,
    SUM,
    Expected,
    assert_billed_exactly,
    billed_totals,
    usage,
)
from tests.integration.harness import (
    end_offsets,
    free_port,
    produce,
    scrape_when_up,
    wait_until,
)
from tests.integration.test_connector import World, world_factory  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

MAX_RECORDS = 50
#: Partition 0's backlog, in blocks: each one costs at least one round trip.
BACKLOG_BLOCKS = 10
#: Stripe's answer time while partition 0 is held: partition 1 must be sent within it.
LATENCY_MS = 5000
PAUSED = "meterstream_paused_partitions"
IN_FLIGHT = "meterstream_requests_in_flight"
HELD_CUSTOMERS = 3
FLOWING_CUSTOMERS = ("cus_flowing_a", "cus_flowing_b")


def flowing_usage(count: int) -> Expected:
    """``count`` sum records of customers of their own, stamped a few seconds ago."""
    now = time.time() - 5
    expected = Expected()
    for index in range(count):
        customer = FLOWING_CUSTOMERS[index % len(FLOWING_CUSTOMERS)]
        value = index + 1
        body = {
            "id": f"flowing-{index}",
            "event_name": SUM,
            "customer": customer,
            "value": value,
            "timestamp": now - index,
        }
        expected.records.append((customer.encode(), orjson.dumps(body)))
        expected.totals[(SUM, customer)] += value
        hour = int((now - index) // HOUR) * HOUR
        expected.hourly[(SUM, customer, hour)] = (
            expected.hourly.get((SUM, customer, hour), 0) + value
        )
    return expected


def merged(first: Expected, second: Expected) -> Expected:
    """What both bill together (their customers are apart)."""
    both = Expected(records=first.records + second.records)
    both.totals = first.totals + second.totals
    both.hourly = {**first.hourly, **second.hourly}
    both.latest = {**first.latest, **second.latest}
    return both


def test_a_partition_held_at_its_bound_does_not_stop_the_others(
    world_factory: Callable[..., World],  # noqa: F811
) -> None:
    """Partition 0 has a backlog of 10 blocks and Stripe answers slowly: it reaches its
    bound (two blocks) and is paused. Records produced to partition 1 then are fetched,
    sent and billed while partition 0's first block is still unanswered and the rest of
    its backlog unbilled; once Stripe is fast again everything is billed exactly, nothing
    is dead-lettered, everything is committed."""
    world = world_factory(
        partitions=2,
        auto_meters=False,
        meters=METERS,
        latency_ms=LATENCY_MS,
        fault_scope="stream",  # sessions are not slowed: only the requests that bill
    )
    held = usage(BACKLOG_BLOCKS * MAX_RECORDS, customers=HELD_CUSTOMERS, hours=0.5)
    assert produce(world.bootstrap, world.topic, held.records, partition=0) == len(held.records)
    held_sum = sum(total for (meter, _customer), total in held.totals.items() if meter == SUM)
    port = free_port()
    config = world.config(
        aggregation={**AGGREGATION, "max_records": MAX_RECORDS, "max_seconds": 1},
        meters=METERS_ON,
        metrics={"enabled": True, "host": "127.0.0.1", "port": port},
        logging={"level": "DEBUG"},
    )
    consumed = f'meterstream_records_consumed_total{{topic="{world.topic}"}}'

    def billed_of_held() -> int:
        totals = billed_totals(world.emulator)
        return sum(totals.get(key, 0) for key in held.totals if key[0] == SUM)

    connector = world.connector(config, until_idle=1.5)

    # Partition 1 is empty (caught up, never at a bound), and the global bound is far:
    # the one paused partition is partition 0, at its bound. Its first block's request must
    # be on the wire before partition 1 has records: batches carry any partitions' events,
    # and partition 1's, ready before that request left (a slow session start), would
    # travel in it rather than in a request of their own.
    def held_and_sent() -> bool:
        now = scrape_when_up(port)
        return now.get(PAUSED, 0) == 1 and now.get(IN_FLIGHT, 0) == 1

    wait_until(
        held_and_sent,
        timeout=60,
        what="partition 0 paused at its bound with its first block's request in flight",
    )
    flowing = flowing_usage(10)
    assert produce(world.bootstrap, world.topic, flowing.records, partition=1) == len(
        flowing.records
    )

    # Partition 0 has one request on the wire at a time (its first block's, answered after
    # LATENCY_MS): a second one in flight is partition 1's. Read in this order, partition
    # 0 still unbilled means its first block was unanswered when the figures were taken.
    def second_request() -> tuple[dict[str, float], int] | None:
        now = scrape_when_up(port)
        held_billed = billed_of_held()
        return (now, held_billed) if now.get(IN_FLIGHT, 0) >= 2 or held_billed else None

    now, held_billed = wait_until(
        second_request, timeout=60, what="partition 1's request or partition 0's first answer"
    )
    assert held_billed == 0, (
        "partition 1 was sent only once partition 0's first block was done; log tail:\n"
        + connector.log_tail()
    )
    assert now[IN_FLIGHT] == 2, now
    assert now[PAUSED] == 1, "partition 0 is held at its bound, partition 1 is not paused"
    # Partition 0 took its two blocks and nothing more; partition 1's records were taken.
    assert 2 * MAX_RECORDS < now[consumed] <= 2 * MAX_RECORDS + len(flowing.records), now

    def flowing_billed() -> dict[tuple[str, str], int] | None:
        totals = billed_totals(world.emulator)  # one snapshot for both partitions
        done = all(totals.get(key) == value for key, value in flowing.totals.items())
        return dict(totals) if done else None

    snapshot = wait_until(flowing_billed, timeout=60, what="partition 1's records billed")
    unbilled = held_sum - sum(snapshot.get(key, 0) for key in held.totals if key[0] == SUM)
    # Partition 1 was answered one LATENCY_MS after it was sent, partition 0's blocks
    # one LATENCY_MS each after its first: at most two of its ten are billed.
    assert unbilled > 0, "partition 1 was billed only after all of partition 0's backlog"

    world.emulator.configure(latency_ms=0)
    assert connector.wait(120) == 0, connector.log_tail()
    assert_billed_exactly(world.emulator, merged(held, flowing))
    world.assert_all_committed()
    assert end_offsets(world.bootstrap, world.dead_letter_topic, 1) == {0: 0}
    # Partition 0 was held, and read again from the first record it had not taken.
    log = connector.log_path.read_text(errors="replace")
    assert f"{world.topic}-0: a block is done, fetching again from offset" in log
