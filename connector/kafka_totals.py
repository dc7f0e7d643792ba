"""What Kafka says was billed: the consumer group's committed records, mapped again and summed.

The Kafka side of ``meterstream reconcile``. For every partition of ``kafka.topics``:

- the range is [the first offset at or after (start - lookback), by record timestamp;
  the group's committed offset): what the connector has resolved (billed or
  dead-lettered). Offsets are read by consumers that never subscribe (``assign`` and
  ``committed``), so the group's members and its offsets are left alone;
- the dead-letter topic is read once, in full, for its ``meterstream.source.*`` headers:
  a record there was not billed (when the letter names an event, only that event);
- every other record is decoded and mapped with the current configuration, the same
  ``records.decode`` (or the Schema Registry decoder) and ``mapping.Mapper`` as ``run``.
  The mapper checks Stripe's time window against the record's Kafka timestamp (about
  when it was billed), not today;
- events whose timestamp lies in [start, end) are tallied per (event name, customer):
  sum, count and the latest value, so any meter formula can be compared. With
  ``mapping.stripe_account`` each connected account gets tallies of its own
  (``KafkaTotals.by_account``), compared with that account's meters.

Memory is the tallies and the dead-letter key set, never the records: a topic of millions
of records costs what its (event name, customer) pairs cost.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from connector.config import MeterstreamConfig
from connector.dlq import HEADER_PREFIX
from connector.errors import MeterstreamError, RecordError
from connector.mapping import Mapper
from connector.registry_decode import value_decoder
from connector.timestamps import format_rfc3339_ms

log = logging.getLogger("meterstream.reconcile")

#: Metadata, offsets and committed-offset calls: generous, a cluster may be busy.
KAFKA_TIMEOUT_SECONDS = 30.0
#: Records taken from librdkafka per call.
CONSUME_BATCH = 5000
#: Reading fails when no partition moves forward for this long.
STALL_SECONDS = 60.0
#: How often a progress line is written while reading.
PROGRESS_EVERY_SECONDS = 5.0
_SOURCE_TOPIC = HEADER_PREFIX + "source.topic"
_SOURCE_PARTITION = HEADER_PREFIX + "source.partition"
_SOURCE_OFFSET = HEADER_PREFIX + "source.offset"
_EVENT_NAME = HEADER_PREFIX + "event_name"

#: (what is read, records read so far, records to read): called every few seconds.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class PartitionRange:
    """Offsets [start, end) of one partition: from the window's start to the commit."""

    topic: str
    partition: int
    start: int
    end: int

    @property
    def size(self) -> int:
        """Offsets in the range (records, unless compaction or transactions left gaps)."""
        return max(0, self.end - self.start)


@dataclass(slots=True)
class Tally:
    """One (event name, customer): every formula's figure, so any meter can be compared."""

    sum: int
    count: int
    last_timestamp: str  # wire shape: fixed width UTC, so strings order like times
    last_value: int


@dataclass
class KafkaTotals:
    """The Kafka side of a reconciliation."""

    tallies: dict[tuple[str, str], Tally] = field(default_factory=dict)
    #: With ``mapping.stripe_account``: each connected account's tallies (``tallies`` stays
    #: empty: every event goes to an account).
    by_account: dict[str, dict[tuple[str, str], Tally]] = field(default_factory=dict)
    ranges: list[PartitionRange] = field(default_factory=list)
    records_read: int = 0
    #: Records (or single events of fanned-out records) found in the dead-letter topic.
    dead_lettered: int = 0
    #: Records the current mapping refuses that are not in the dead-letter topic (the
    #: mapping changed since they were billed, or they were never resolved this way).
    unmappable: int = 0
    #: Events whose timestamp falls outside [start, end).
    outside_window: int = 0
    #: Events of event names not asked for (``--event-name``).
    other_event_names: int = 0
    #: Events tallied.
    events: int = 0


class _KafkaClock:
    """ "Now" for the mapper's time-window check: the record's own Kafka timestamp."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _consumer(config: MeterstreamConfig, group_id: str) -> Any:
    return Consumer(
        {
            **config.kafka.common_properties(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "logger": logging.getLogger("meterstream.kafka.reconcile"),
        }
    )


def _partitions(consumer: Any, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=KAFKA_TIMEOUT_SECONDS)
    described = metadata.topics.get(topic)
    if described is None or described.error is not None:
        why = described.error.str() if described is not None and described.error else "unknown"
        raise MeterstreamError(f"cannot read Kafka topic {topic!r}: {why}")
    return sorted(described.partitions)


def committed_ranges(config: MeterstreamConfig, since_ms: int) -> list[PartitionRange]:
    """Per partition of ``kafka.topics``: from the first record at or after ``since_ms``
    (record timestamps) to the group's committed offset (empty when nothing is committed)."""
    # group.id is the connector's only so that committed() answers for it: this consumer
    # never subscribes (it does not join the group) and never commits.
    offsets_reader = _consumer(config, config.kafka.group_id)
    try:
        partitions = [
            TopicPartition(topic, p)
            for topic in config.kafka.topics
            for p in _partitions(offsets_reader, topic)
        ]
        commits = offsets_reader.committed(partitions, timeout=KAFKA_TIMEOUT_SECONDS)
        starts = offsets_reader.offsets_for_times(
            [TopicPartition(tp.topic, tp.partition, since_ms) for tp in partitions],
            timeout=KAFKA_TIMEOUT_SECONDS,
        )
    except KafkaException as exc:
        raise MeterstreamError(f"cannot read offsets from Kafka: {exc.args[0].str()}") from None
    finally:
        offsets_reader.close()
    start_of = {(tp.topic, tp.partition): tp.offset for tp in starts}
    ranges = []
    for tp in commits:
        end = tp.offset if tp.offset >= 0 else 0  # never committed: nothing billed yet
        start = start_of.get((tp.topic, tp.partition), -1)
        if start < 0:  # no record at or after since_ms
            start = end
        ranges.append(PartitionRange(tp.topic, tp.partition, start, max(start, end)))
    return ranges


def dead_letter_keys(
    config: MeterstreamConfig, ranges: list[PartitionRange], progress: Progress | None = None
) -> set[tuple[str, int, int, str]]:
    """(topic, partition, offset, event name or "") of every dead letter inside ``ranges``.

    "" means the whole record was dead-lettered; a name means only that event was.
    """
    wanted = {(r.topic, r.partition): r for r in ranges if r.size}
    keys: set[tuple[str, int, int, str]] = set()
    if not wanted:
        return keys
    topic = config.kafka.dead_letter_topic
    reader = _consumer(config, f"meterstream-reconcile-{uuid.uuid4().hex[:12]}")
    try:
        assignment = []
        total = 0
        for partition in _partitions(reader, topic):
            low, high = reader.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=KAFKA_TIMEOUT_SECONDS
            )
            if high > low:
                assignment.append(PartitionRange(topic, partition, low, high))
                total += high - low

        def collect(message: Any) -> None:
            headers = dict(message.headers() or ())
            try:
                source = (
                    headers[_SOURCE_TOPIC].decode(),
                    int(headers[_SOURCE_PARTITION]),
                )
                offset = int(headers[_SOURCE_OFFSET])
            except (KeyError, ValueError, UnicodeDecodeError, TypeError):
                return  # not a meterstream dead letter
            span = wanted.get(source)
            if span is None or not span.start <= offset < span.end:
                return
            name = headers.get(_EVENT_NAME)
            keys.add((source[0], source[1], offset, name.decode() if name else ""))

        _read(reader, assignment, collect, what="dead letters", total=total, progress=progress)
    finally:
        reader.close()
    return keys


def tally(
    config: MeterstreamConfig,
    ranges: list[PartitionRange],
    dead: set[tuple[str, int, int, str]],
    *,
    start: float,
    end: float,
    event_names: Collection[str] = (),
    progress: Progress | None = None,
) -> KafkaTotals:
    """Map every record of ``ranges`` and tally its events within [start, end)."""
    totals = KafkaTotals(ranges=list(ranges))
    clock = _KafkaClock()
    mapper = Mapper(config.mapping, clock=clock)
    default_customer_key = config.mapping.customer_payload_key
    customer_keys = {
        entry.event_name: entry.customer_payload_key or default_customer_key
        for entry in config.mapping.fan_out
    }
    value_keys = {
        entry.event_name: entry.value_payload_key or config.mapping.value_payload_key
        for entry in config.mapping.fan_out
    }
    default_value_key = config.mapping.value_payload_key
    first, stop = format_rfc3339_ms(start), format_rfc3339_ms(end)
    only = frozenset(event_names)
    decode = value_decoder(config)
    platform_tallies = totals.tallies
    account_of = mapper.account if config.mapping.stripe_account else None

    def count(message: Any) -> None:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        totals.records_read += 1
        if dead and (topic, partition, offset, "") in dead:
            totals.dead_lettered += 1
            return
        kind, stamp = message.timestamp()
        clock.now = stamp / 1000.0 if kind and stamp > 0 else time.time()
        try:
            decoded = decode(message.value())
            events = mapper.map(
                decoded,
                topic=topic,
                partition=partition,
                offset=offset,
                kafka_timestamp_ms=stamp if kind else None,
            )
            account = account_of(decoded) if account_of is not None else None
        except RecordError:
            totals.unmappable += 1
            return
        tallies = platform_tallies if account is None else totals.by_account.setdefault(account, {})
        for event in events:
            name = event["event_name"]
            if dead and (topic, partition, offset, name) in dead:
                totals.dead_lettered += 1
                continue
            if only and name not in only:
                totals.other_event_names += 1
                continue
            when = event["timestamp"]
            if not first <= when < stop:
                totals.outside_window += 1
                continue
            payload = event["payload"]
            customer = payload[customer_keys.get(name, default_customer_key)]
            raw = payload.get(value_keys.get(name, default_value_key), "0")
            value = int(raw)
            totals.events += 1
            found = tallies.get((name, customer))
            if found is None:
                tallies[(name, customer)] = Tally(value, 1, when, value)
            else:
                found.sum += value
                found.count += 1
                if when >= found.last_timestamp:
                    found.last_timestamp, found.last_value = when, value

    reader = _consumer(config, f"meterstream-reconcile-{uuid.uuid4().hex[:12]}")
    try:
        wanted = [r for r in ranges if r.size]
        total = sum(r.size for r in wanted)
        _read(reader, wanted, count, what="records", total=total, progress=progress)
    finally:
        reader.close()
    return totals


def _read(
    consumer: Any,
    ranges: list[PartitionRange],
    handle: Callable[[Any], None],
    *,
    what: str,
    total: int,
    progress: Progress | None,
) -> None:
    """Feed every record of ``ranges`` to ``handle``, partition ranges read in parallel."""
    if not ranges:
        return
    pending = {(r.topic, r.partition): r for r in ranges}
    consumer.assign([TopicPartition(r.topic, r.partition, r.start) for r in ranges])
    done = 0
    last_move = time.monotonic()
    next_report = last_move
    while pending:
        messages = consumer.consume(CONSUME_BATCH, 1.0)
        moved = False
        finished: set[tuple[str, int]] = set()
        for message in messages:
            error = message.error()
            key = (message.topic(), message.partition())
            span = pending.get(key)
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if span is not None:
                        finished.add(key)  # nothing more to read, whatever the commit says
                    continue
                raise MeterstreamError(f"cannot read Kafka {what}: {error.str()}")
            if span is None or message.offset() >= span.end:
                continue
            handle(message)
            done += 1
            moved = True
            if message.offset() >= span.end - 1:
                finished.add(key)
        if not moved and pending:
            # Gaps (compaction, transaction markers) can hide the last offsets: ask where
            # each pending partition stands.
            for tp in consumer.position(
                [TopicPartition(topic, partition) for topic, partition in pending]
            ):
                if tp.offset >= pending[(tp.topic, tp.partition)].end:
                    finished.add((tp.topic, tp.partition))
        finished &= pending.keys()
        if finished:
            for key in finished:
                del pending[key]
            # Stop fetching what is done: prefetched records past the commit cost memory.
            consumer.pause([TopicPartition(topic, partition) for topic, partition in finished])
        now = time.monotonic()
        if moved or finished:
            last_move = now
        elif now - last_move > STALL_SECONDS:
            stuck = ", ".join(f"{t}[{p}]" for t, p in sorted(pending))
            raise MeterstreamError(
                f"reading Kafka {what} made no progress for {STALL_SECONDS:g} s ({stuck}): "
                "is the cluster reachable?"
            )
        if progress is not None and now >= next_report:
            progress(what, done, total)
            next_report = now + PROGRESS_EVERY_SECONDS
    if progress is not None:
        progress(what, done, total)
