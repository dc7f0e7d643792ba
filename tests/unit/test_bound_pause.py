"""The aggregation bound pauses only the partition at it, and ``meterstream_paused_partitions``
counts it (docs/aggregation.md, "At most two blocks per partition"): with the global pause on
held records, every partition; once that pause ends, still the partition at its bound.

The real worker with aggregation on, fed real ``confluent_kafka.Message`` objects; the
consumer is a stand-in that remembers what was paused and sought (pure logic: nothing is
fetched or sent, answers are credited by hand).
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Message, TopicPartition

from bench.hotpath import TOPIC, _StandIn
from connector import metrics
from connector.concurrency import FixedConcurrency
from connector.config import MeterstreamConfig
from connector.health import HealthState
from connector.meters import Meter, MeterCatalog
from connector.worker import Worker

MAX_RECORDS = 3
#: Both partitions at their bound hold 12 records: the global pause begins there and ends
#: at half of it, when only one partition's two blocks are left.
MAX_BUFFERED = 4 * MAX_RECORDS


class _Consumer:
    """What the worker asks of the consumer at the bound: pause, seek, resume."""

    def __init__(self) -> None:
        self.paused: set[int] = set()
        self.sought: list[tuple[int, int]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {tp.partition for tp in partitions}

    def seek(self, partition: TopicPartition) -> None:
        self.sought.append((partition.partition, partition.offset))


def _worker(consumer: _Consumer) -> Worker:
    config = MeterstreamConfig.model_validate(
        {
            "kafka": {"topics": [TOPIC], "dead_letter_topic": f"{TOPIC}.dlq"},
            "stripe": {"api_key": "sk_test_bound"},
            "metrics": {"enabled": False},
            "meters": {"preflight": True},
            "aggregation": {"enabled": True, "max_records": MAX_RECORDS, "max_seconds": 60},
            "batching": {"max_buffered_records": MAX_BUFFERED},
        }
    )
    catalog = MeterCatalog(
        [
            Meter(
                id="mtr_api_requests",
                event_name="api_requests",
                status="active",
                formula="sum",
            )
        ]
    )
    stand_in: Any = _StandIn()
    worker = Worker(
        config,
        health=HealthState(max_heartbeat_age=60),
        consumer=consumer,  # type: ignore[arg-type]
        delivery=stand_in,
        limit=FixedConcurrency(64),
        sessions=stand_in,
        dlq=stand_in,
        catalog=catalog,
    )
    worker._ledger.assign([(TOPIC, 0), (TOPIC, 1)])
    assert worker._agg is not None
    for partition in (0, 1):
        state = worker._ledger.get(TOPIC, partition)
        assert state is not None
        worker._agg.assign(state, None)
    return worker


def _messages(partition: int, count: int) -> list[Message]:
    return [
        Message(
            topic=TOPIC,
            partition=partition,
            offset=offset,
            value=b'{"id":"r-%d-%d","customer":"cus_1","event_name":"api_requests","value":1}'
            % (partition, offset),
        )
        for offset in range(count)
    ]


def _answer_first_block(worker: Worker, partition: int) -> None:
    """Start the partition's first block and credit Stripe's answer to every event of it."""
    agg = worker._agg
    assert agg is not None
    [(state, block)] = [(s, b) for s, b in agg.startable() if s.partition == partition]
    worker._start_block(agg, state, block)
    for batch in worker._batcher.due(force=True):
        worker._accepted(batch, None)
    worker._bound_partitions(agg)


def _gauge() -> float:
    value: float = metrics.PAUSED_PARTITIONS._value.get()
    return value


def test_only_the_partition_at_its_bound_is_paused_and_the_gauge_counts_it() -> None:
    consumer = _Consumer()
    worker = _worker(consumer)
    agg = worker._agg
    assert agg is not None
    # Partition 0: two blocks and two records past them (not taken); partition 1: one block.
    worker._ingest(_messages(0, 2 * MAX_RECORDS + 2) + _messages(1, MAX_RECORDS))
    worker._bound_partitions(agg)
    assert consumer.paused == {0}
    assert _gauge() == 1

    # Partition 1 at its bound too: 12 records held, the global pause pauses every one.
    worker._ingest(_messages(1, 2 * MAX_RECORDS + 1)[MAX_RECORDS:])
    worker._bound_partitions(agg)
    worker._apply_backpressure()
    assert consumer.paused == {0, 1}
    assert _gauge() == 2

    # Partition 1's blocks are answered: it is read again from where it stopped, but the
    # global pause holds it until the held records fall to half the bound.
    _answer_first_block(worker, 1)
    assert consumer.sought == [(1, 2 * MAX_RECORDS)]
    assert consumer.paused == {0, 1}
    _answer_first_block(worker, 1)
    worker._apply_backpressure()
    # The global pause is over; partition 0 still holds its two blocks, and shows.
    assert consumer.paused == {0}
    assert _gauge() == 1

    _answer_first_block(worker, 0)
    assert consumer.sought == [(1, 2 * MAX_RECORDS), (0, 2 * MAX_RECORDS)]
    assert consumer.paused == set()
    assert _gauge() == 0
