"""GroupConsumer.pause/resume: only a paused partition is ever resumed.

Resuming a partition that was never paused can restart its fetcher from a stale position
and deliver records already consumed a second time (librdkafka issue #4637). The worker
resumes every newly assigned partition when it is not holding back (to clear a pause kept
from an earlier assignment), so the filter lives in the consumer wrapper. What librdkafka
is asked to do is recorded by a stand-in for its consumer: pure bookkeeping, no broker.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import TopicPartition

from connector.config import KafkaConfig
from connector.kafka import GroupConsumer


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("pause", [(tp.topic, tp.partition) for tp in partitions]))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.calls.append(("resume", [(tp.topic, tp.partition) for tp in partitions]))


def _consumer() -> tuple[GroupConsumer, _Recorder]:
    consumer = GroupConsumer(KafkaConfig(topics=["usage"], dead_letter_topic="usage.dlq"))
    recorder = _Recorder()
    real: Any = consumer._consumer
    real.close()
    consumer._consumer = recorder
    return consumer, recorder


def _tps(*partitions: int) -> list[TopicPartition]:
    return [TopicPartition("usage", p) for p in partitions]


def test_resume_leaves_partitions_that_were_never_paused_alone() -> None:
    consumer, librdkafka = _consumer()
    consumer.resume(_tps(0, 1))
    assert librdkafka.calls == []
    consumer.pause(_tps(1))
    consumer.resume(_tps(0, 1, 2))
    assert librdkafka.calls == [("pause", [("usage", 1)]), ("resume", [("usage", 1)])]
    consumer.resume(_tps(1))  # resumed already
    assert len(librdkafka.calls) == 2


def test_a_partition_paused_before_a_revocation_is_resumed_when_it_comes_back() -> None:
    consumer, librdkafka = _consumer()
    consumer.pause(_tps(0, 1, 2))
    # Revoked while paused, assigned again: the worker resumes newcomers it holds no more.
    consumer.resume(_tps(2, 3))
    assert librdkafka.calls[-1] == ("resume", [("usage", 2)])
    consumer.resume(_tps(0, 1))
    assert librdkafka.calls[-1] == ("resume", [("usage", 0), ("usage", 1)])
