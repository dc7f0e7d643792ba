"""The librdkafka side of the connector: client properties, their validation, commit errors.

Every Kafka client meterstream makes (the group consumer, the dead-letter producer, the
burst-mode offsets reader) takes its properties from here, so that what a user may set,
what meterstream owns, and how a refusal is classified are said once.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from connector.config import CONNECTION_PROPERTY_PREFIXES, KafkaConfig

#: librdkafka consumer settings the connector owns: users may not override them.
RESERVED_CONSUMER_KEYS = frozenset(
    {"group.id", "enable.auto.commit", "enable.auto.offset.store", "on_commit"}
)
#: Commit refusals that only mean "the group is rebalancing" (not worth a warning).
REBALANCE_COMMIT_ERRORS = frozenset(
    {
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.STALE_MEMBER_EPOCH,
    }
)
#: librdkafka statistics interval: how soon /readyz sees Kafka come back (or go away).
STATS_INTERVAL_MS = 2000


def consumer_properties(kafka: KafkaConfig, **callbacks: Any) -> dict[str, Any]:
    """The group consumer's properties; ``callbacks`` are librdkafka's (``error_cb``, ...)."""
    return {
        **kafka.common_properties(),
        "group.id": kafka.group_id,
        "client.id": f"meterstream-{socket.gethostname()}-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": kafka.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "enable.partition.eof": False,
        # Broker states every few seconds: librdkafka reports "all brokers down" once,
        # and never that they are back; the statistics say both.
        "statistics.interval.ms": STATS_INTERVAL_MS,
        # librdkafka's own log lines go through our logging (format, level, redaction).
        "logger": logging.getLogger("meterstream.kafka.consumer"),
        **callbacks,
        **kafka.consumer,
    }


def producer_properties(kafka: KafkaConfig, **callbacks: Any) -> dict[str, Any]:
    """The dead-letter producer's properties: idempotent, every replica acknowledges."""
    return {
        **kafka.common_properties(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        # librdkafka retries internally until this; after it the DLQ retries itself.
        "message.timeout.ms": 30_000,
        "logger": logging.getLogger("meterstream.kafka.producer"),
        **callbacks,
        **kafka.producer,
    }


def offsets_reader_properties(kafka: KafkaConfig) -> dict[str, Any]:
    """A consumer of the group that never subscribes: it only reads committed offsets."""
    return {
        **kafka.common_properties(),
        "group.id": kafka.group_id,
        "enable.auto.commit": False,
        "logger": logging.getLogger("meterstream.kafka.offsets"),
    }


def property_problems(kafka: KafkaConfig) -> list[tuple[str, str]]:
    """What librdkafka would refuse in ``kafka.consumer`` / ``kafka.producer``, offline.

    librdkafka checks names and values when a client is created; one is created here with
    no brokers to reach (so nothing connects) and closed at once. Connection settings are
    left out: certificate files and SASL libraries belong to the machine that runs the
    connector, not to the one that checks its configuration.
    """
    problems: list[tuple[str, str]] = [
        (f"kafka.consumer.{key}", "managed by meterstream; remove it")
        for key in sorted(RESERVED_CONSUMER_KEYS & set(kafka.consumer))
    ]
    checks: list[tuple[str, Any, dict[str, Any]]] = [
        ("kafka.consumer", Consumer, _offline(consumer_properties(kafka))),
        ("kafka.producer", Producer, _offline(producer_properties(kafka))),
    ]
    for section, client, props in checks:
        if problems:
            break  # a reserved key already says what to fix
        try:
            made = client(props)
        except KafkaException as exc:
            problems.append((section, f"{_kafka_message(exc)}; fix or remove that property"))
            continue
        if isinstance(made, Consumer):
            made.close()
        else:
            made.flush(0)
    return problems


def _offline(props: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in props.items() if not k.startswith(CONNECTION_PROPERTY_PREFIXES)}
    return {**kept, "bootstrap.servers": "", "log_level": 0}


def _kafka_message(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
