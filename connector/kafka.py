"""The librdkafka side of the connector: client properties, the group consumer adapter.

Every Kafka client meterstream makes (the group consumer, the dead-letter producer, the
burst-mode offsets reader) takes its properties from here, so that what a user may set,
what meterstream owns, and how a refusal is classified are said once. ``GroupConsumer`` is
the one thin adapter over librdkafka's consumer: its callbacks, commits and their errors,
lag, topic retention and the burst-mode check (docs/architecture.md, "Threads").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import orjson
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    ResourceType,
)

from connector import metrics
from connector.config import CONNECTION_PROPERTY_PREFIXES, KafkaConfig

log = logging.getLogger("meterstream.kafka")

Key = tuple[str, int]
Assigned = Callable[[list[TopicPartition]], Coroutine[Any, Any, None]]
Revoked = Callable[[list[TopicPartition], bool], Coroutine[Any, Any, list[TopicPartition]]]

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
#: Bound of each broker call of the burst-mode and retention checks: slow means "not yet".
BROKER_CALL_TIMEOUT_SECONDS = 2.0
#: Attempts at reading committed offsets on assignment (aggregation) before giving up.
COMMITTED_READ_ATTEMPTS = 3


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


class GroupConsumer:
    """The worker's consumer in the group: every librdkafka call and callback goes here.

    Calls that block (``consume``, synchronous commits, ``close``, broker queries) are made
    from the poll thread. librdkafka calls the rebalance callbacks inside ``consume()`` on
    that thread; they are handed to the event loop and waited for, and their failures are
    logged here (librdkafka would swallow them). Commit failures reported by ``on_commit``
    reach the loop through ``on_commit_failed``.
    """

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._on_commit_failed: Callable[[Key], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._assigned: Assigned | None = None
        self._revoked: Revoked | None = None
        self._offsets_reader: Any = None
        #: Aggregation: hand each newly assigned partition over with its committed offset
        #: and commit metadata (a block in doubt, docs/aggregation.md).
        self.read_committed_on_assign = False
        #: Partitions paused through this consumer and not resumed since (see ``resume``).
        self._paused: set[Key] = set()
        #: Set when close() starts: partitions assigned while leaving are never fetched.
        self._closing = False
        #: Why Kafka is unusable right now (for /readyz); written on the poll thread.
        self.problem: str | None = None
        self._consumer: Any = Consumer(
            consumer_properties(
                config,
                error_cb=self._on_error,
                on_commit=self._on_commit,
                stats_cb=self._on_stats,
            )
        )

    # -- the group ------------------------------------------------------------------------

    def subscribe(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        assigned: Assigned,
        revoked: Revoked,
        commit_failed: Callable[[Key], None],
    ) -> None:
        """Join the group; rebalances run ``assigned`` / ``revoked`` on ``loop``, and a
        refused commit calls ``commit_failed(key)`` there."""
        self._loop = loop
        self._assigned = assigned
        self._revoked = revoked
        self._on_commit_failed = commit_failed
        self._consumer.subscribe(
            list(self._config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def consume(self, max_records: int, timeout: float) -> list[Any]:
        """Up to ``max_records`` messages (poll thread); rebalance callbacks run inside.

        Waits up to ``timeout`` for the first message only: librdkafka's batch consume
        holds what arrived until ``max_records`` are there or the timeout passes, which
        at a steady few thousand records/s adds the whole timeout to every record's
        latency (docs/freshness.md)."""
        messages: list[Any] = self._consumer.consume(max_records, 0)
        if messages or timeout <= 0:
            return messages
        messages = self._consumer.consume(1, timeout)
        if messages and max_records > 1:
            messages.extend(self._consumer.consume(max_records - 1, 0))
        return messages

    def pause(self, partitions: list[TopicPartition]) -> None:
        """Stop fetching ``partitions`` (prefetched records of theirs are dropped)."""
        self._consumer.pause(partitions)
        self._paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        """Fetch again those of ``partitions`` that were paused; the others are left alone.

        Resuming a partition that is not paused can restart its fetcher from a stale
        position and deliver records already consumed again (librdkafka issue #4637): the
        next owner's records billed twice, left to Stripe's dedupe. Paused stays paused
        across a revocation (librdkafka keeps it), so a partition that comes back is
        resumed if it was paused before."""
        paused = [tp for tp in partitions if (tp.topic, tp.partition) in self._paused]
        if not paused:
            return
        self._consumer.resume(paused)
        self._paused.difference_update((tp.topic, tp.partition) for tp in paused)

    def seek(self, partition: TopicPartition) -> None:
        """Fetch ``partition`` from its offset next (records fetched and not taken)."""
        self._consumer.seek(partition)

    def close(self) -> None:
        """Leave the group (revoking what is left) and close the offsets reader (poll thread)."""
        self._closing = True
        self._consumer.close()
        if self._offsets_reader is not None:
            self._offsets_reader.close()

    def _in_loop(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except Exception:
            # librdkafka would swallow it: say it loudly instead.
            log.exception("rebalance handling failed")
            return None

    def _on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        assert self._assigned is not None
        if self.read_committed_on_assign and partitions and not self._closing:
            partitions = self._committed_with_metadata(partitions)
        self._in_loop(self._assigned(partitions))

    def _committed_with_metadata(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets and metadata of ``partitions`` (poll thread, in on_assign,
        before anything of them is fetched). Without them a block in doubt could be formed
        differently and billed twice, so failing to read them ends the process."""
        last: KafkaException | None = None
        for _attempt in range(COMMITTED_READ_ATTEMPTS):
            try:
                found: list[TopicPartition] = self._consumer.committed(
                    partitions, timeout=BROKER_CALL_TIMEOUT_SECONDS * 5
                )
            except KafkaException as exc:
                last = exc
                log.warning("reading committed offsets failed (retrying): %s", exc)
                continue
            if not any(tp.error is not None for tp in found):
                return found
            last = KafkaException(next(tp.error for tp in found if tp.error is not None))
        raise RuntimeError(
            f"cannot read the committed offsets of {len(partitions)} newly assigned "
            f"partitions ({last}): aggregation needs them to re-form a block in doubt"
        )

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # The loop drains and says what to commit; the commit itself happens here, in the
        # poll thread inside the callback: a synchronous commit from the loop thread would
        # wait for a rebalance that waits for this callback.
        assert self._revoked is not None
        offsets = self._in_loop(self._revoked(partitions, False))
        if offsets:
            self.commit(offsets, sync=True)

    def _on_lost(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        assert self._revoked is not None
        self._in_loop(self._revoked(partitions, True))

    # -- commits --------------------------------------------------------------------------

    def commit(self, offsets: list[TopicPartition], *, sync: bool) -> bool:
        """Hand positions to Kafka; ``sync`` only from the poll thread (see the class doc)."""
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not sync)
        except KafkaException as exc:  # no coordinator, rebalance in progress...
            metrics.COMMITS.labels("failed").inc()
            log.warning("commit failed (will retry): %s", exc)
            return False
        if sync:
            metrics.COMMITS.labels("ok").inc()
        return True

    def commit_durably(self, offsets: list[TopicPartition]) -> set[Key]:
        """Commit synchronously (poll thread, outside rebalance callbacks); the partitions
        whose commit the broker confirmed. Aggregation commits this way only: one commit
        at a time, so a block's range can never be overwritten by an older commit."""
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            metrics.COMMITS.labels("failed").inc()
            log.warning("commit failed (will retry): %s", exc)
            return set()
        done = {(tp.topic, tp.partition) for tp in result or () if tp.error is None}
        metrics.COMMITS.labels("ok" if len(done) == len(offsets) else "failed").inc()
        return done

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = err is not None or any(tp.error is not None for tp in partitions)
        metrics.COMMITS.labels("failed" if failed else "ok").inc()
        if not failed:
            return
        reason = err.str() if err else "partition error"
        if err is not None and err.code() in REBALANCE_COMMIT_ERRORS:
            # Routine while the group rebalances: the partition's next owner starts from the
            # last accepted commit and Stripe drops the repeats by identifier.
            log.info("commit refused during a rebalance (%s); retried after it", reason)
        else:
            log.warning("commit failed: %s; retried at the next commit interval", reason)
        # Committing again later is safe: positions only move forward.
        if self._loop is not None and self._on_commit_failed is not None:
            for tp in partitions:
                self._loop.call_soon_threadsafe(self._on_commit_failed, (tp.topic, tp.partition))

    # -- health ---------------------------------------------------------------------------

    def _on_stats(self, stats: str) -> None:
        """librdkafka's statistics (poll thread): Kafka is fine while a broker is connected."""
        try:
            brokers = orjson.loads(stats).get("brokers") or {}
        except orjson.JSONDecodeError:
            return
        # nodeid -1: a bootstrap address, not a broker of the cluster.
        if any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values()):
            self.problem = None
        elif brokers and self.problem is None:
            self.problem = "Kafka: no broker connected"

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) or err.fatal():
            self.problem = f"Kafka: {err.str()}"
        log.warning("Kafka: %s", err.str())  # repeats are throttled by connector.logs

    # -- lag and retention ----------------------------------------------------------------

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The partition's high watermark as last fetched (no broker call), or None."""
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), cached=True
            )
        except KafkaException:
            return None
        return high if high is not None and high >= 0 else None

    def retention_seconds(self, topics: Iterable[str]) -> dict[str, float | None]:
        """Each topic's ``retention.ms`` in seconds, None without time retention (poll thread)."""
        admin = AdminClient(self._config.common_properties())
        resources = [ConfigResource(ResourceType.TOPIC, topic) for topic in topics]
        found: dict[str, float | None] = {}
        for resource, future in admin.describe_configs(resources).items():
            try:
                entries = future.result(timeout=BROKER_CALL_TIMEOUT_SECONDS)
            except Exception as exc:  # best effort: the next refresh tries again
                log.debug("retention of %s unknown for now: %s", resource.name, exc)
                continue
            entry = entries.get("retention.ms")
            value = int(entry.value) if entry is not None and entry.value is not None else -1
            found[resource.name] = value / 1000 if value >= 0 else None
        return found

    # -- burst mode -----------------------------------------------------------------------

    def committed_to_end(self) -> bool:
        """Whether the group has committed every partition of its topics up to the end.

        Poll thread, blocking calls with short timeouts. Burst mode means "the backlog is
        billed", not "my share is": a member without partitions (more members than
        partitions, or a crashed member holding them until its session times out) must not
        declare the job finished early. Committed offsets are read through a second consumer
        that never subscribes, on its own connection: the group consumer's coordinator
        connection can be held by a JoinGroup during a rebalance, and this check must never
        stall polling. Not through AdminClient: its ListConsumerGroupOffsets crashes the
        process on a NOT_COORDINATOR answer, which is what a group gets right after a broker
        restart (librdkafka issue #5040).
        """
        try:
            return self._committed_to_end()
        except KafkaException as exc:
            log.debug("burst-mode check postponed: %s", exc)
            return False

    def _committed_to_end(self) -> bool:
        partitions: list[TopicPartition] = []
        for topic in self._config.topics:
            metadata = self._consumer.list_topics(topic, timeout=BROKER_CALL_TIMEOUT_SECONDS)
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                return False
            partitions.extend(TopicPartition(topic, p) for p in sorted(described.partitions))
        if self._offsets_reader is None:
            self._offsets_reader = Consumer(offsets_reader_properties(self._config))
        answer = self._offsets_reader.committed(partitions, timeout=BROKER_CALL_TIMEOUT_SECONDS)
        for tp in answer:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition),
                timeout=BROKER_CALL_TIMEOUT_SECONDS,
                cached=False,
            )
            if tp.offset == OFFSET_INVALID or tp.offset < 0:
                if self._config.auto_offset_reset == "earliest" and low < high:
                    return False
            elif tp.offset < high:
                return False
        return True
