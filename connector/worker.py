"""The consume loop of one process: poll, decode, map, check, batch, send, commit.

The loop runs on the event loop thread; ``GroupConsumer.consume`` blocks, so it runs in a
dedicated poll thread, and librdkafka's callbacks come from inside it (docs/architecture.md,
"Threads"). Everything the loop owns (the ledger, the batcher, in-flight tasks, held
records) is touched only on the event loop thread: rebalance callbacks hand their work to
the loop and wait for it; commit failures arrive through ``call_soon_threadsafe``.

Each turn of the loop: ingest what was polled (decode, map, meter checks, batch), start due
requests, serve dead-letter reports, commit the resolved prefix every ``commit.interval_ms``,
pause or resume fetching on held records, report health. The invariants it keeps are those
of docs/architecture.md: commit after success, bounded, clean hand-over.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from connector import concurrency, heap, metrics
from connector.aggregation import AggregateRecord, Aggregator, Block
from connector.batching import Batch, Batcher
from connector.block_range import BlockRange
from connector.config import MeterstreamConfig
from connector.deadline import Deadline
from connector.delivery import Delivery
from connector.dlq import DeadLetterQueue
from connector.error_reports import ErrorReportPoller
from connector.errors import DeadLetterReason, RecordError
from connector.health import HealthState
from connector.kafka import GroupConsumer
from connector.lag import LagGauges
from connector.logs import report_repeats
from connector.mapping import Mapper, MeterEventBody
from connector.meter_gate import MeterGate
from connector.meters import MeterCatalog, account_catalog, preflight
from connector.offsets import OffsetLedger, PartitionOffsets, PendingRecord
from connector.ratelimit import RateLimiter
from connector.records import decode
from connector.registry_decode import RegistryDecoder
from connector.registry_gate import RegistryGate
from connector.session import AccountSessions, Session
from connector.sink import StripeSink

log = logging.getLogger("meterstream.worker")

#: Longest a poll blocks: bounds how late shutdown, linger and commits are noticed.
POLL_TIMEOUT_SECONDS = 0.1
#: Resume fetching once held records fall to this fraction of the bound.
RESUME_FRACTION = 0.5
#: How often --until-idle asks the broker whether the group is committed to the end.
IDLE_CHECK_EVERY_SECONDS = 0.5
#: At shutdown, how long dead letters still in flight may take to confirm after the drain.
DLQ_FLUSH_GRACE_SECONDS = 2.0


class Worker:
    """One member of the consumer group and the loop that bills what it reads."""

    def __init__(
        self,
        config: MeterstreamConfig,
        *,
        health: HealthState,
        consumer: GroupConsumer,
        delivery: Delivery,
        limit: concurrency.ConcurrencyLimit,
        sessions: AccountSessions,
        dlq: DeadLetterQueue,
        catalog: MeterCatalog,
        reports: ErrorReportPoller | None = None,
        index: int = 0,
        until_idle: float | None = None,
    ) -> None:
        self.config = config
        self.health = health
        self.index = index
        self.until_idle = until_idle
        self.consumer = consumer
        self._delivery = delivery
        #: How many requests may be in flight now (adaptive, or batching.max_in_flight).
        self._concurrency = limit
        self._sessions = sessions
        self._dlq = dlq
        self._meters = MeterGate(
            catalog,
            config.mapping,
            refuse=self._refuse_checked,
            catalog_for=functools.partial(account_catalog, config),
        )
        #: Polls Stripe's error reports while this member owns the first topic's partition 0.
        self._reports = reports
        self._reports_task: asyncio.Task[None] | None = None
        self._election = (config.kafka.topics[0], 0)
        delivery.listen(
            on_accepted=self._accepted, on_dead=self._dead_letter, on_resting=self._dispatch
        )
        dlq.listen(on_written=self._dead_letter_written)
        self._mapper = Mapper(config.mapping)
        self._max_bytes = config.records.max_bytes
        #: records.format avro/protobuf/json_schema: values decoded with the registry's schemas.
        self._registry = (
            RegistryGate(
                RegistryDecoder(config.schema_registry, config.records.format),
                max_bytes=config.records.max_bytes,
            )
            if config.records.format != "json"
            else None
        )
        self._batcher = Batcher(config.batching.max_events, config.batching.linger_ms / 1000)
        #: Blocks of aggregated records per partition (aggregation.enabled), else None.
        self._agg: Aggregator | None = None
        if config.aggregation.enabled:
            self._agg = Aggregator(
                config.aggregation, catalog, config.mapping, catalog_of=self._meters.catalog_of
            )
            consumer.read_committed_on_assign = True
        self._ledger = OffsetLedger(on_resolved=self._wake)
        self._ready: deque[Batch] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._lag = LagGauges(consumer, config.kafka.topics)
        self._paused = False
        #: Partitions paused at their aggregation bound (two blocks held), by (topic, partition).
        self._bounded: set[tuple[str, int]] = set()
        #: Partitions assigned since the last backpressure check: paused or resumed there.
        self._newly_assigned: list[TopicPartition] = []
        self._stopping = False
        #: Set when shutdown starts: revocations during it share the same budget.
        self._shutdown_deadline: Deadline | None = None
        self._last_commit = 0.0
        self._last_activity = time.monotonic()
        self._last_idle_check = 0.0
        self._changed: asyncio.Event | None = None
        self.stats: dict[str, int] = {"consumed": 0, "events_sent": 0, "dead_lettered": 0}

    def request_stop(self) -> None:
        """Begin a clean hand-over (SIGTERM/SIGINT): safe to call from a signal handler."""
        self._stopping = True

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until stopped (or idle in burst mode), then hand over cleanly."""
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-poll-{self.index}")
        self.consumer.subscribe(
            loop,
            assigned=self._assigned,
            revoked=self._revoked,
            commit_failed=self._ledger.commit_failed,
        )
        kafka = self.config.kafka
        log.info("consuming %s as group %s", ", ".join(kafka.topics), kafka.group_id)
        try:
            while not self._stopping:
                # Paused: poll only to serve callbacks and heartbeats, and wait below for
                # answers instead, so fetching resumes the moment there is room again.
                timeout = 0.0 if self._paused else self._poll_timeout()
                messages = await loop.run_in_executor(
                    executor, self.consumer.consume, kafka.poll_max_records, timeout
                )
                if messages:
                    self._ingest(messages)
                self._refresh_meters()
                self._release_registry()
                if self._agg is not None:
                    await self._aggregate_turn(self._agg, loop, executor)
                self._dispatch()
                self._dlq.poll()
                if self._agg is None:
                    self._maybe_commit(loop)
                self._apply_backpressure()
                self._update_health()
                if self._paused:
                    await self._await_room(self._poll_timeout())
                if self.until_idle is not None and self._idle_long_enough():
                    if self._agg is None:
                        self._commit(sync=False)
                    else:
                        await self._commit_durably(self._positions(), loop, executor)
                    if not await loop.run_in_executor(executor, self.consumer.committed_to_end):
                        continue
                    log.info("caught up and idle for %.1f s: stopping", self.until_idle)
                    break
        finally:
            await self._shutdown(loop, executor)

    async def _shutdown(
        self, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor
    ) -> None:
        deadline = self._shutdown_deadline = Deadline.after(
            self.config.shutdown.drain_timeout_seconds
        )
        await self._drain(list(self._ledger.partitions.values()), deadline)
        # Letters confirmed now are committed now: flushed after the final commit, they
        # would be dead-lettered again by the next owner. On this thread: delivery reports
        # run the ledger's callbacks. A drain that timed out still gets a short grace.
        self._dlq.flush(max(DLQ_FLUSH_GRACE_SECONDS, deadline.remaining()))
        final = self._positions()
        if final:
            commit_final: Callable[[], bool] = functools.partial(self._commit_now, final)
            if await loop.run_in_executor(executor, commit_final):
                self._mark_committed(final)
        # close() revokes what is left (committing again, a no-op) and leaves the group.
        await loop.run_in_executor(executor, self.consumer.close)
        executor.shutdown(wait=False)
        await self._stop_reports()
        await self._meters.close()
        if self._registry is not None:
            await self._registry.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        report_repeats(final=True)
        log.info(
            "stopped: %d records consumed, %d events sent, %d dead-lettered",
            self.stats["consumed"],
            self.stats["events_sent"],
            self.stats["dead_lettered"],
        )

    # -- ingest: records to events --------------------------------------------------------

    def _ingest(self, messages: list[Any]) -> None:
        """Track, decode, map, check and batch one poll's records (the hot path).

        One interpreted pass per record, so the common case is written out here rather
        than called (docs/performance.md): a poll comes in runs of one partition, tracked
        with that partition's queue at hand; a JSON value that parses to an object is not
        sent through ``records.decode`` (which explains every other case); an event the
        platform's meters list already found sendable skips the meter gate.
        """
        ledger = self._ledger
        mapper = self._mapper.map_record
        account_of = self._mapper.account if self.config.mapping.stripe_account else None
        batcher_add = self._batcher.add
        max_bytes = self._max_bytes
        checking = self._meters.enabled
        meters_take = self._meters.take
        # (event name, customer key, value key) of the platform's sendable events: the set
        # is emptied in place when the list changes. Fan-out events have keys of their own.
        sendable = self._meters.catalog.sendable if not self.config.mapping.fan_out else None
        customer_key = self.config.mapping.customer_payload_key
        value_key = self.config.mapping.value_payload_key
        registry = self._registry
        agg = self._agg
        loads = orjson.loads
        consumed: dict[str, int] = {}
        fields: Any
        state: PartitionOffsets | None = None
        track: Callable[[PendingRecord], None] | None = None
        topic = ""
        partition = -1
        run = 0  # records tracked in the current run of one partition
        last_msg: Any = None
        taken = -1
        redelivered = 0  # records handed out again by librdkafka, skipped
        for msg in messages:
            if msg.error() is not None:
                self._on_message_error(msg.error())
                continue
            if msg.partition() != partition or msg.topic() != topic:  # a new run
                if run and state is not None:
                    state.last_offset, state.last_message = taken, last_msg
                    consumed[topic] = consumed.get(topic, 0) + run
                    run = 0
                topic, partition = msg.topic(), msg.partition()
                state = ledger.get(topic, partition)
                track = state.pending.append if state is not None else None
                # The last offset this assignment took. librdkafka can hand out records
                # again after a pause and resume (seen for a partition with no committed
                # offset: it fetched from the reset position again); taken twice, they
                # would be sent twice, left to Stripe's dedupe.
                taken = -1 if state is None or state.last_offset is None else state.last_offset
            if state is None or track is None:  # fetched before a revocation: not ours
                continue
            offset = msg.offset()
            if offset <= taken:
                redelivered += 1
                continue
            if agg is not None and agg.holds_off(state, offset):
                continue  # its partition holds two blocks: read again once one is done
            last_msg, taken = msg, offset
            run += 1
            record = PendingRecord(msg, state, offset)
            track(record)
            if agg is not None:
                agg.track(record)
            value = msg.value()
            try:
                if registry is not None:
                    fields = registry.decode(record, value)
                    if fields is None:
                        continue  # held until the Schema Registry answers
                elif value and len(value) <= max_bytes:
                    try:
                        fields = loads(value)
                    except orjson.JSONDecodeError:
                        fields = None
                    if type(fields) is not dict:
                        fields = decode(value, max_bytes)  # refuses, and says why
                else:
                    fields = decode(value, max_bytes)
                events = mapper(fields, topic, partition, offset, msg.timestamp()[1] or None)
                if account_of is not None:
                    record.account = account_of(fields)
            except RecordError as exc:
                self._refuse(record, exc.reason, exc.message, level=logging.INFO)
                continue
            record.remaining = len(events)
            if checking:
                event = events[0]
                if (
                    sendable is None
                    or record.account is not None
                    or len(events) != 1
                    or (event["event_name"], customer_key, value_key) not in sendable
                ) and not meters_take(record, events):
                    continue
            if agg is not None:
                agg.add(record, events)  # sent when its block starts
                continue
            batcher_add(events, record)
        if run and state is not None:
            state.last_offset, state.last_message = taken, last_msg
            consumed[topic] = consumed.get(topic, 0) + run
        if redelivered:
            log.debug("skipped %d records fetched again after a pause", redelivered)
        if consumed:
            # Not a sign that Kafka is up: these may have been fetched before it went away.
            self._last_activity = time.monotonic()
            for name, count in consumed.items():
                metrics.RECORDS_CONSUMED.labels(name).inc(count)
                self.stats["consumed"] += count

    def _release_registry(self) -> None:
        """Map and batch (or refuse) what the registry gate decoded after holding it."""
        if self._registry is None:
            return
        for record, outcome in self._registry.turn():
            if isinstance(outcome, RecordError):
                self._refuse(record, outcome.reason, outcome.message, level=logging.INFO)
                continue
            msg = record.message
            try:
                events = self._mapper.map(
                    outcome,
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=record.offset,
                    kafka_timestamp_ms=msg.timestamp()[1] or None,
                )
                if self.config.mapping.stripe_account:
                    record.account = self._mapper.account(outcome)
            except RecordError as exc:
                self._refuse(record, exc.reason, exc.message, level=logging.INFO)
                continue
            record.remaining = len(events)
            if self._meters.enabled and not self._meters.take(record, events):
                continue
            self._enqueue(record, events)

    def _enqueue(self, record: PendingRecord, events: list[MeterEventBody]) -> None:
        """Mapped and checked events wait for sending: in their partition's block when
        aggregating (sent when it starts), else in their account's batch. ``_ingest`` does
        the same inline, on the hot path."""
        if self._agg is not None:
            self._agg.add(record, events)
        else:
            self._batcher.add(events, record)

    def _refuse(
        self, record: PendingRecord, reason: DeadLetterReason, message: str, *, level: int
    ) -> None:
        """Dead-letter a record refused before sending (its one obligation: the letter)."""
        record.remaining = 1
        record.dead_lettered = True
        self._log_record(level, "dead-lettering record: %s: %s", reason, message, record.message)
        self._dlq.send(record, reason, message)

    def _on_message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise RuntimeError(f"fatal Kafka consumer error: {err.str()}")
        log.warning("Kafka consumer: %s", err.str())

    @staticmethod
    def _log_record(level: int, fmt: str, reason: str, message: str, msg: Any) -> None:
        context = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        log.log(level, fmt, reason, message, extra={**context, "reason": reason})

    # -- meter checks (docs/architecture.md, "Meters") -----------------------------------

    def _refuse_checked(
        self, record: PendingRecord, reason: DeadLetterReason, message: str
    ) -> None:
        self._refuse(record, reason, message, level=logging.WARNING)

    def _refresh_meters(self) -> None:
        """Let the meter gate read the list when due; batch what it releases."""
        for record, events in self._meters.turn():
            self._enqueue(record, events)

    # -- sending --------------------------------------------------------------------------

    def _poll_timeout(self) -> float:
        due = self._batcher.seconds_until_due()
        if due is None:
            return POLL_TIMEOUT_SECONDS
        return min(POLL_TIMEOUT_SECONDS, max(due, 0.001))

    def _dispatch(self, *, force: bool = False) -> None:
        """Start requests for due batches while there is room in flight."""
        self._ready.extend(self._batcher.due(force=force))
        limit = self._concurrency.limit
        if self.config.batching.adaptive_concurrency:
            # A delivery waiting out a 429's Retry-After is not on the wire: counting it
            # would leave its place empty for that second. Another takes it, at most one
            # per place the limit allows: a storm that refuses everything cuts the limit,
            # and with it the replacements (docs/concurrency.md, "Retry-After").
            limit += min(self._delivery.resting, limit)
        while self._ready and len(self._tasks) < limit:
            batch = self._ready.popleft()
            metrics.BATCH_SIZE.observe(len(batch))
            task = asyncio.create_task(self._delivery.deliver(batch))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed unexpectedly", exc_info=task.exception())
        self._dispatch()

    def _wake(self) -> None:
        """A record was resolved: wake the loop if it waits for room or for a drain."""
        if self._changed is not None:
            self._changed.set()

    def _accepted(self, batch: Batch, request_id: str | None) -> None:
        if self._agg is None:  # the hot path: one call for the batch
            self._ledger.finish_each(batch.records)
        else:
            answered: list[PendingRecord] = []
            for record in batch.records:
                if isinstance(record, AggregateRecord):  # its answer answers every member
                    answered += record.members
                else:
                    answered.append(record)
            self._ledger.finish_each(answered)
        metrics.EVENTS_SENT.inc(len(batch))
        metrics.BATCHES.labels("ok").inc()
        self.stats["events_sent"] += len(batch)

    def _dead_letter(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        message: str,
        request_id: str | None,
        event: MeterEventBody,
    ) -> None:
        """An event is refused for good: its record goes to the DLQ (once); an aggregate's
        refusal sends every record it summed, each naming the aggregate."""
        if isinstance(record, AggregateRecord):
            note = f"{message} (aggregate of {len(record.members)} records)"
            for member, own_event in zip(record.members, record.member_events, strict=True):
                self._dead_letter_member(
                    member, reason, note, request_id, event=own_event, aggregate=record.identifier
                )
            return

        def write_letter() -> None:
            self._log_record(
                logging.WARNING, "dead-lettering record: %s: %s", reason, message, record.message
            )
            self._dlq.send(record, reason, message, request_id=request_id, event=event, attempts=1)

        self._ledger.refuse(record, write_letter)

    def _dead_letter_member(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        message: str,
        request_id: str | None,
        *,
        event: MeterEventBody,
        aggregate: str,
    ) -> None:
        def write_letter() -> None:
            self._log_record(
                logging.WARNING, "dead-lettering record: %s: %s", reason, message, record.message
            )
            self._dlq.send(
                record,
                reason,
                message,
                request_id=request_id,
                event=event,
                attempts=1,
                aggregate=aggregate,
            )

        self._ledger.refuse(record, write_letter)

    def _dead_letter_written(self, record: PendingRecord) -> None:
        self.stats["dead_lettered"] += 1
        self._ledger.finish(record)

    # -- commits --------------------------------------------------------------------------

    def _positions(self, states: list[PartitionOffsets] | None = None) -> list[TopicPartition]:
        agg = self._agg
        if agg is None:
            return [
                TopicPartition(state.topic, state.partition, position)
                for state, position in self._ledger.positions(states)
            ]
        agg.settle()
        return [
            TopicPartition(
                state.topic, state.partition, position, metadata=agg.metadata(state, position)
            )
            for state, position in self._ledger.positions(states)
        ]

    def _maybe_commit(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        if now - self._last_commit < self.config.commit.interval_ms / 1000:
            return
        self._last_commit = now
        self._commit(sync=False)
        self._lag.update(self._ledger.partitions.values(), loop)

    def _commit(self, *, sync: bool) -> None:
        """Commit the resolved prefixes (``sync`` only from the poll thread)."""
        offsets = self._positions()
        if offsets and self.consumer.commit(offsets, sync=sync):
            self._mark_committed(offsets)

    def _commit_now(self, offsets: list[TopicPartition]) -> bool:
        """The final, synchronous commit (poll thread)."""
        return self.consumer.commit(offsets, sync=True)

    # -- aggregation (docs/aggregation.md) ------------------------------------------------

    async def _aggregate_turn(
        self, agg: Aggregator, loop: asyncio.AbstractEventLoop, executor: ThreadPoolExecutor
    ) -> None:
        """Close due blocks; make the ranges of startable ones durable, then send them; and
        commit the resolved prefixes, synchronously, in the same call."""
        agg.close_due(self._caught_up, pressed=self._paused)
        registry_holding = self._registry is not None and self._registry.held > 0
        ready = [] if self._meters.holding or registry_holding else agg.startable()
        durable: dict[tuple[str, int], TopicPartition] = {}
        for state, block in ready:
            if agg.needs_commit(block):
                durable[(state.topic, state.partition)] = TopicPartition(
                    state.topic, state.partition, block.start, metadata=block.range().encode()
                )
            else:
                self._start_block(agg, state, block)
        offsets = list(durable.values())
        now = time.monotonic()
        commit_due = now - self._last_commit >= self.config.commit.interval_ms / 1000
        if commit_due:
            self._last_commit = now
            offsets += [tp for tp in self._positions() if (tp.topic, tp.partition) not in durable]
        if offsets:
            done = await self._commit_durably(offsets, loop, executor)
            for state, block in ready:
                key = (state.topic, state.partition)
                if key in durable and key in done and not state.closed:
                    self._start_block(agg, state, block)
        if commit_due:
            self._lag.update(self._ledger.partitions.values(), loop)
        self._bound_partitions(agg)

    def _bound_partitions(self, agg: Aggregator) -> None:
        """At most two blocks per partition: pause the partitions at their bound; once
        their first block is done, read them again from the first record not taken."""
        bounded = self._bounded
        reached = [
            TopicPartition(state.topic, state.partition)
            for state in agg.at_bound()
            if (state.topic, state.partition) not in bounded
        ]
        if reached:
            self.consumer.pause(reached)
            bounded.update((tp.topic, tp.partition) for tp in reached)
            self._report_paused()
        agg.settle()
        for state, first in agg.released():
            if first is not None:
                try:
                    self.consumer.seek(TopicPartition(state.topic, state.partition, first))
                except KafkaException as exc:
                    # Still paused, nothing skipped is lost (no commit passes it): try again.
                    log.warning(
                        "%s-%d: could not read again from offset %d (%s); retrying",
                        state.topic,
                        state.partition,
                        first,
                        exc.args[0] if exc.args else exc,
                    )
                    agg.hold_again(state, first)
                    continue
            bounded.discard((state.topic, state.partition))
            # DEBUG: under a backlog this happens once per block.
            log.debug(
                "%s-%d: a block is done, fetching again from %s",
                state.topic,
                state.partition,
                "where it stopped" if first is None else f"offset {first}",
            )
            if not self._paused:  # else the end of the global pause resumes it
                self.consumer.resume([TopicPartition(state.topic, state.partition)])
            self._report_paused()

    async def _commit_durably(
        self,
        offsets: list[TopicPartition],
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
    ) -> set[tuple[str, int]]:
        """A synchronous commit on the poll thread; marks and returns what was confirmed."""
        if not offsets:
            return set()
        done = await loop.run_in_executor(executor, self.consumer.commit_durably, offsets)
        self._mark_committed([tp for tp in offsets if (tp.topic, tp.partition) in done])
        return done

    def _start_block(self, agg: Aggregator, state: PartitionOffsets, block: Block) -> None:
        """Its range is durable (or it has no aggregate): fold and hand the events over."""
        started = agg.start(state, block)
        for record in started.resolved:
            self._ledger.finish(record)
        add = self._batcher.add
        for event, carrier in started.events:
            add((event,), carrier)
        for event, record in started.direct:
            add((event,), record)

    def _caught_up(self, state: PartitionOffsets) -> bool:
        """Whether everything the partition holds was read (as of the last fetch)."""
        high = self.consumer.high_watermark(state.topic, state.partition)
        last = state.last_offset
        return high is not None and last is not None and last + 1 >= high

    def _unsettled(self, state: PartitionOffsets) -> bool:
        """What a drain waits for: unresolved records, or (aggregation) a started block.

        Blocks not started are left to the next owner: nothing of them was sent."""
        if self._agg is None:
            return state.unresolved > 0
        return self._agg.in_flight(state)

    def _mark_committed(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self._ledger.committed((tp.topic, tp.partition), tp.offset)

    # -- backpressure and health ----------------------------------------------------------

    def _apply_backpressure(self) -> None:
        bound = self.config.batching.max_buffered_records
        # Held, not just unresolved: records resolved behind an unresolved one keep their
        # Kafka message in memory too (docs/architecture.md, "Bounded").
        held = self._ledger.held
        metrics.BUFFERED_RECORDS.set(held)
        partitions = self._ledger.partitions
        if self._newly_assigned:
            # Newcomers follow the current state; resuming also clears a pause that
            # librdkafka kept from an earlier assignment of the same partition.
            fresh = [tp for tp in self._newly_assigned if (tp.topic, tp.partition) in partitions]
            self._newly_assigned = []
            if fresh:
                (self.consumer.pause if self._paused else self.consumer.resume)(fresh)
        # Records waiting for a failing Schema Registry: pause as for a full buffer.
        blocked = self._registry is not None and self._registry.blocked
        if not self._paused and (held >= bound or blocked) and partitions:
            assignment = [TopicPartition(t, p) for t, p in partitions]
            self.consumer.pause(assignment)
            self._paused = True
            self._report_paused()
            # DEBUG: under a backlog this cycles many times a second; the gauge tells.
            log.debug("paused fetching: %d records held until resolved", held)
        elif self._paused and held <= bound * RESUME_FRACTION and not blocked:
            # Not the partitions paused at their aggregation bound: their blocks decide.
            unbounded = [TopicPartition(t, p) for t, p in partitions if (t, p) not in self._bounded]
            if unbounded:
                self.consumer.resume(unbounded)
            self._paused = False
            self._report_paused()
            log.debug("resumed fetching")

    def _report_paused(self) -> None:
        """The gauge counts every partition not fetched: all of them while the global pause
        lasts, else those held at their aggregation bound (one partition's pause must show)."""
        paused = len(self._ledger.partitions) if self._paused else len(self._bounded)
        metrics.PAUSED_PARTITIONS.set(paused)

    async def _await_room(self, seconds: float) -> None:
        """Wait until enough held records are released to resume fetching, or ``seconds``."""
        resume_at = self.config.batching.max_buffered_records * RESUME_FRACTION
        deadline = Deadline.after(seconds)
        registry = self._registry
        while (
            self._ledger.held > resume_at or (registry is not None and registry.blocked)
        ) and not deadline.passed:
            if not await self._changed_within(deadline.remaining()):
                return

    async def _changed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a record to be resolved; whether one was."""
        assert self._changed is not None
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _update_health(self) -> None:
        health = self.health
        health.beat()
        report_repeats()
        stripe = self._delivery.problem(
            not_ready_after=self.config.delivery.not_ready_after_seconds
        )
        health.set_problem("stripe", stripe or self._meters.problem)
        health.set_problem("dead_letter", self._dlq.problem)
        health.set_problem("kafka", self.consumer.problem)
        if self._registry is not None:
            health.set_problem("schema_registry", self._registry.problem)
        expiry = self._sessions.seconds_until_expiry()
        if expiry is not None:
            metrics.SESSION_EXPIRY.set(expiry)

    # -- burst mode -----------------------------------------------------------------------

    def _idle_long_enough(self) -> bool:
        assert self.until_idle is not None
        now = time.monotonic()
        if now - self._last_activity < self.until_idle:
            return False
        if self._tasks or self._ready or self._batcher.buffered_events or self._ledger.held:
            return False
        if self._dlq.pending:
            return False
        if now - self._last_idle_check < IDLE_CHECK_EVERY_SECONDS:
            return False
        self._last_idle_check = now
        return True

    async def _stop_reports(self) -> None:
        task, self._reports_task = self._reports_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # -- rebalances (run on the loop; GroupConsumer hands them over) ----------------------

    async def _assigned(self, partitions: list[TopicPartition]) -> None:
        self._ledger.assign((tp.topic, tp.partition) for tp in partitions)
        if self._agg is not None:
            for tp in partitions:
                state = self._ledger.get(tp.topic, tp.partition)
                assert state is not None
                resume = BlockRange.decode(tp.metadata, tp.offset)
                if resume is not None:
                    log.info(
                        "%s-%d: re-forming the block in doubt at offsets %d..%d",
                        tp.topic,
                        tp.partition,
                        resume.start,
                        resume.end - 1,
                    )
                self._agg.assign(state, resume)
        if self._reports is not None and self._election in _keys(partitions):
            # This member now owns the election: it alone polls Stripe's error reports.
            self._reports_task = asyncio.create_task(self._reports.run())
        # Not paused here: pause() from this thread while the poll thread waits in the
        # rebalance callback deadlocks librdkafka. _apply_backpressure does it next turn.
        self._newly_assigned.extend(partitions)
        self._last_activity = time.monotonic()
        metrics.REBALANCES.labels("assigned").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self._ledger))
        log.info("assigned %s", _names(partitions))

    async def _revoked(self, partitions: list[TopicPartition], lost: bool) -> list[TopicPartition]:
        """Drain (or, when lost, abandon) these partitions; return the offsets to commit."""
        states = [
            state
            for tp in partitions
            if (state := self._ledger.get(tp.topic, tp.partition)) is not None
        ]
        if self._election in _keys(partitions):
            await self._stop_reports()
        offsets: list[TopicPartition] = []
        if not lost and states:
            deadline = self._shutdown_deadline or Deadline.after(
                self.config.shutdown.drain_timeout_seconds
            )
            await self._drain(states, deadline)
            offsets = self._positions(states)  # committed by the callback (poll thread)
        for state in states:
            abandoned = self._ledger.close(state)
            if self._agg is not None:
                self._agg.forget(state)
                self._bounded.discard((state.topic, state.partition))
                self._report_paused()
            if abandoned:
                log.warning(
                    "handing over %s-%d with %d unresolved records (left uncommitted; "
                    "the next owner resends them with the same identifiers)",
                    state.topic,
                    state.partition,
                    abandoned,
                )
            metrics.forget_partition(state.topic, state.partition)
        self._last_activity = time.monotonic()
        metrics.REBALANCES.labels("lost" if lost else "revoked").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self._ledger))
        log.info("%s %s", "lost" if lost else "revoked", _names(partitions))
        return offsets

    async def _drain(self, states: list[PartitionOffsets], deadline: Deadline) -> None:
        """Send what is buffered for these partitions; wait until resolved or ``deadline``."""
        self._dispatch(force=True)
        while any(self._unsettled(state) for state in states) and not deadline.passed:
            self._dispatch(force=True)
            self._dlq.poll()
            self._refresh_meters()
            self._release_registry()
            await self._changed_within(min(deadline.remaining(), 0.05))


def _keys(partitions: list[TopicPartition]) -> set[tuple[str, int]]:
    return {(tp.topic, tp.partition) for tp in partitions}


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in partitions) or "nothing"


def run_worker(
    config: MeterstreamConfig,
    *,
    health: HealthState,
    until_idle: float | None,
    workers: int = 1,
    index: int = 0,
    install_signals: bool = True,
    on_ready: Callable[[Worker], None] | None = None,
) -> Worker:
    """Check the meters, assemble a worker and run it on a fresh event loop until stopped."""
    api_key = config.require_api_key()
    built: list[Worker] = []

    async def main() -> None:
        health.set_problem("stripe", "listing billing meters (meters.preflight)")
        catalog = await preflight(config)  # ConfigError: exit 2 before consuming anything
        health.set_problem("stripe", None)
        sink = StripeSink(config.stripe, api_key, max_connections=config.batching.max_in_flight)

        async def create_session(account: str | None) -> Session:
            session = await sink.create_session(account)
            metrics.SESSION_RENEWALS.inc()
            where = f" for connected account {account}" if account else ""
            log.info("meter event session %s created%s", session.id, where)
            return session

        sessions = AccountSessions(
            create_session, renew_margin_seconds=config.stripe.session_renew_margin_seconds
        )
        limit = concurrency.for_config(config.batching, on_change=metrics.CONCURRENCY_LIMIT.set)
        worker = Worker(
            config,
            health=health,
            consumer=GroupConsumer(config.kafka),
            delivery=Delivery(
                sink,
                sessions,
                config.delivery,
                limiter=RateLimiter(config.rate_limit, workers=workers),
                concurrency=limit,
            ),
            limit=limit,
            sessions=sessions,
            dlq=DeadLetterQueue(config.kafka),
            catalog=catalog,
            reports=(
                ErrorReportPoller(config, api_key, event_names=catalog.event_name_of)
                if config.stripe.error_reports_poll_seconds > 0
                else None
            ),
            index=index,
            until_idle=until_idle,
        )
        built.append(worker)
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.request_stop)
        if on_ready is not None:
            on_ready(worker)
        heap.tune_for_streaming()
        try:
            await worker.run()
        finally:
            await sink.aclose()

    asyncio.run(main())
    return built[0]
