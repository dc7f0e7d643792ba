"""How far behind the connector is: records and seconds per partition, retention headroom.

``meterstream_consumer_lag_seconds`` is the age of the oldest record not yet billed or
dead-lettered; ``meterstream_retention_headroom_seconds`` is the topic's ``retention.ms``
minus that age, the time left before Kafka deletes usage that was never billed (the
chart's alerts page on both). Updated at each commit interval; retention is read with the
admin client every few minutes, off the loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from connector import metrics
from connector.kafka import GroupConsumer
from connector.offsets import PartitionOffsets

#: How often each topic's retention.ms is read again.
RETENTION_REFRESH_SECONDS = 300.0


class LagGauges:
    """Sets the lag and headroom gauges from the ledger's partitions and the consumer."""

    def __init__(self, consumer: GroupConsumer, topics: Iterable[str]) -> None:
        self._consumer = consumer
        self._topics = list(topics)
        self._retention: dict[str, float | None] = {}
        self._retention_at = float("-inf")

    def update(self, states: Iterable[PartitionOffsets], loop: asyncio.AbstractEventLoop) -> None:
        now = time.time()
        oldest: dict[str, float] = {}
        for state in states:
            topic, partition = state.topic, state.partition
            high = self._consumer.high_watermark(topic, partition)
            position = state.position()
            if high is None or position is None:
                continue
            behind = max(0, high - position)
            metrics.CONSUMER_LAG.labels(topic, str(partition)).set(behind)
            age = oldest_unbilled_age(state, behind, now)
            metrics.CONSUMER_LAG_AGE.labels(topic, str(partition)).set(age)
            oldest[topic] = max(oldest.get(topic, 0.0), age)
        for topic, age in oldest.items():
            retention = self._retention.get(topic)
            if retention is not None:
                metrics.RETENTION_HEADROOM.labels(topic).set(retention - age)
        if time.monotonic() - self._retention_at >= RETENTION_REFRESH_SECONDS:
            self._retention_at = time.monotonic()
            future = loop.run_in_executor(None, self._consumer.retention_seconds, self._topics)
            future.add_done_callback(self._retention_read)

    def _retention_read(self, future: asyncio.Future[dict[str, float | None]]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        self._retention.update(future.result())
        for topic, retention in self._retention.items():
            if retention is None:
                metrics.forget_retention(topic)


def oldest_unbilled_age(state: PartitionOffsets, behind: int, now: float) -> float:
    """Seconds since the oldest record of the partition not yet billed or dead-lettered.

    The first held record is the oldest unresolved one (the resolved prefix is gone). With
    none held but records still unread, the last one read is the best lower bound known.
    """
    if state.pending:
        _kind, stamp = state.pending[0].message.timestamp()
    elif behind and state.last_message is not None:
        _kind, stamp = state.last_message.timestamp()
    else:
        return 0.0
    return max(0.0, now - stamp / 1000) if stamp and stamp > 0 else 0.0
