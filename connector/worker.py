"""The consume loop of one process: poll, decode, map, batch, send, dead-letter, commit.

Threads and the event loop:

- ``consumer.consume()`` blocks, so it runs in a single dedicated thread while the asyncio
  loop keeps requests to Stripe moving. librdkafka calls the rebalance callbacks from inside
  ``consume()``, on that thread; each callback hands its work to the loop with
  ``run_coroutine_threadsafe`` and waits, so every piece of state below is only ever touched
  on the loop thread, and a revocation can wait for in-flight requests to finish.
- Decoding and mapping (the Python-heavy part) run on the loop thread between polls.

Invariants kept here (DESIGN 3): offsets are committed only up to the contiguous resolved
prefix (``offsets.PartitionOffsets``); consumption pauses when unresolved records reach
``batching.max_buffered_records``; on revocation and shutdown the affected work is drained
within ``shutdown.drain_timeout_seconds``, what is resolved is committed, and anything still
unresolved is left uncommitted for the next owner (who resends it with the same identifiers).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, TopicPartition

from connector import concurrency, kafka, metrics
from connector.batching import Batch, Batcher
from connector.config import MeterstreamConfig
from connector.delivery import Delivery
from connector.dlq import DeadLetterQueue
from connector.errors import DeadLetterReason, RecordError
from connector.health import HealthState
from connector.logs import report_repeats
from connector.mapping import Mapper, MeterEventBody
from connector.offsets import OffsetLedger, PartitionOffsets, PendingRecord
from connector.ratelimit import RateLimiter
from connector.records import decode
from connector.session import SessionProvider
from connector.sink import StripeSink

log = logging.getLogger("meterstream.worker")

_T = TypeVar("_T")

#: Longest a poll blocks: bounds how late shutdown, linger and commits are noticed.
POLL_TIMEOUT_SECONDS = 0.1
#: Resume fetching once unresolved records fall to this fraction of the bound.
RESUME_FRACTION = 0.5
#: How often --until-idle asks the broker for fresh high watermarks.
IDLE_CHECK_EVERY_SECONDS = 0.5
#: Bound of each broker call of the burst-mode check: a slow answer means "not yet".
IDLE_CHECK_TIMEOUT_SECONDS = 2.0
#: At shutdown, how long dead letters still in flight may take to confirm after the drain.
DLQ_FLUSH_GRACE_SECONDS = 2.0
Key = tuple[str, int]


class Worker:
    """One Kafka consumer in the group and everything needed to bill what it reads."""

    def __init__(
        self,
        config: MeterstreamConfig,
        *,
        health: HealthState,
        workers: int = 1,
        index: int = 0,
        until_idle: float | None = None,
    ) -> None:
        self.config = config
        self.health = health
        self.index = index
        self.until_idle = until_idle
        self._api_key = config.require_api_key()
        self._mapper = Mapper(config.mapping)
        self._max_bytes = config.records.max_bytes
        self._batcher = Batcher(config.batching.max_events, config.batching.linger_ms / 1000)
        self._limiter = RateLimiter(config.rate_limit, workers=workers)
        self._concurrency = concurrency.for_config(
            config.batching, on_change=metrics.CONCURRENCY_LIMIT.set
        )
        self._ledger = OffsetLedger(on_resolved=self._wake)
        self._ready: deque[Batch] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._paused = False
        #: Partitions assigned since the last backpressure check: paused or resumed there.
        self._newly_assigned: list[TopicPartition] = []
        self._stopping = False
        self._last_commit = 0.0
        self._last_activity = time.monotonic()
        self._last_idle_check = 0.0
        self._offsets_reader: Any = None
        self._kafka_problem: str | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.consumer: Any = None
        self.stats: dict[str, int] = {"consumed": 0, "events_sent": 0, "dead_lettered": 0}

    # -- life cycle ----------------------------------------------------------------------

    def request_stop(self) -> None:
        """Begin a clean hand-over (SIGTERM/SIGINT): safe to call from a signal handler."""
        self._stopping = True

    def _consumer_properties(self) -> dict[str, Any]:
        return kafka.consumer_properties(
            self.config.kafka,
            error_cb=self._on_kafka_error,
            on_commit=self._on_commit,
            stats_cb=self._on_kafka_stats,
        )

    async def run(self) -> None:
        """Consume until stopped (or idle in burst mode), then hand over cleanly."""
        loop = self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        sink = StripeSink(
            self.config.stripe,
            self._api_key,
            max_connections=self.config.batching.max_in_flight,
        )

        async def create_session() -> Any:
            session = await sink.create_session()
            metrics.SESSION_RENEWALS.inc()
            log.info("meter event session %s created", session.id)
            return session

        self._sessions = SessionProvider(
            create_session,
            renew_margin_seconds=self.config.stripe.session_renew_margin_seconds,
        )
        self._delivery = Delivery(
            sink,
            self._sessions,
            self.config.delivery,
            limiter=self._limiter,
            concurrency=self._concurrency,
            on_accepted=self._accepted,
            on_dead=self._dead_letter,
        )
        self._dlq = DeadLetterQueue(self.config.kafka, on_written=self._dead_letter_written)
        self.consumer = Consumer(self._consumer_properties())
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-poll-{self.index}")
        self.consumer.subscribe(
            list(self.config.kafka.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "consuming %s as group %s",
            ", ".join(self.config.kafka.topics),
            self.config.kafka.group_id,
        )
        max_records = self.config.kafka.poll_max_records
        try:
            while not self._stopping:
                # Paused: poll only to serve callbacks and heartbeats, and wait below for
                # answers instead, so fetching resumes the moment there is room again.
                timeout = 0.0 if self._paused else self._poll_timeout()
                messages = await loop.run_in_executor(
                    executor, self.consumer.consume, max_records, timeout
                )
                if messages:
                    self._ingest(messages)
                self._dispatch()
                self._dlq.poll()
                self._maybe_commit()
                self._apply_backpressure()
                self._update_health()
                if self._paused:
                    await self._await_room(self._poll_timeout())
                if self.until_idle is not None and self._idle_long_enough():
                    self._commit(sync=False)
                    if not await loop.run_in_executor(executor, self._backlog_done):
                        continue
                    log.info("caught up and idle for %.1f s: stopping", self.until_idle)
                    break
        finally:
            await self._shutdown(executor)
            await sink.aclose()

    async def _shutdown(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.config.shutdown.drain_timeout_seconds
        self._drain_deadline = deadline
        await self._drain(list(self._ledger.partitions.values()), deadline)
        # Letters confirmed now are committed now: flushed after the final commit, they
        # would be dead-lettered again by the next owner.
        # On this thread: delivery reports run the ledger's callbacks. Letters waiting for a
        # retry go now; a drain that timed out still gets a short grace for their reports.
        self._dlq.flush(max(DLQ_FLUSH_GRACE_SECONDS, deadline - time.monotonic()))
        final = self._positions()
        commit_final: Callable[[], bool] = functools.partial(self._commit_offsets, final, sync=True)
        if final:
            committed = await loop.run_in_executor(executor, commit_final)
            if committed:
                self._mark_committed(final)
        # close() revokes what is left (committing again, a no-op) and leaves the group.
        await loop.run_in_executor(executor, self.consumer.close)
        if self._offsets_reader is not None:
            await loop.run_in_executor(executor, self._offsets_reader.close)
        executor.shutdown(wait=False)
        for task in list(self._tasks):
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

    # -- ingest: records to events ---------------------------------------------------------

    def _ingest(self, messages: list[Any]) -> None:
        ledger = self._ledger
        mapper = self._mapper.map
        batcher_add = self._batcher.add
        max_bytes = self._max_bytes
        consumed: dict[str, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                self._on_message_error(err)
                continue
            topic = msg.topic()
            partition = msg.partition()
            state = ledger.get(topic, partition)
            if state is None:  # fetched just before a revocation: the new owner reads it
                continue
            offset = msg.offset()
            record = state.track(msg, offset)
            consumed[topic] = consumed.get(topic, 0) + 1
            try:
                events = mapper(
                    decode(msg.value(), max_bytes),
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    kafka_timestamp_ms=msg.timestamp()[1] or None,
                )
            except RecordError as exc:
                record.dead_lettered = True
                self._log_record(logging.INFO, "dead-lettering record: %s", exc, msg, exc.reason)
                self._dlq.send(record, exc.reason, exc.message)
                continue
            record.remaining = len(events)
            batcher_add(events, record)
        if consumed:
            # Not a sign that Kafka is up: these may have been fetched before it went away.
            self._last_activity = time.monotonic()
            for topic, count in consumed.items():
                metrics.RECORDS_CONSUMED.labels(topic).inc(count)
                self.stats["consumed"] += count

    def _on_message_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._PARTITION_EOF:
            return
        if err.fatal():
            raise RuntimeError(f"fatal Kafka consumer error: {err.str()}")
        log.warning("Kafka consumer: %s", err.str())

    @staticmethod
    def _log_record(level: int, fmt: str, arg: object, msg: Any, reason: str | None = None) -> None:
        context = {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}
        log.log(level, fmt, arg, extra={**context, "reason": reason})

    # -- sending -------------------------------------------------------------------------

    def _poll_timeout(self) -> float:
        due = self._batcher.seconds_until_due()
        if due is None:
            return POLL_TIMEOUT_SECONDS
        return min(POLL_TIMEOUT_SECONDS, max(due, 0.001))

    def _dispatch(self, *, force: bool = False) -> None:
        """Start requests for due batches while there is room in flight."""
        self._ready.extend(self._batcher.due(force=force))
        limit = self._concurrency.limit
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
        finish = self._ledger.finish
        for record in batch.records:
            finish(record)
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
        """An event is refused for good: its record goes to the DLQ (once)."""
        if not record.dead_lettered:
            record.dead_lettered = True
            record.remaining += 1  # the dead-letter write is now an obligation
            self._log_record(
                logging.WARNING, "dead-lettering record: %s", message, record.message, reason
            )
            self._dlq.send(record, reason, message, request_id=request_id, event=event, attempts=1)
        self._ledger.finish(record)  # the event itself is answered

    def _dead_letter_written(self, record: PendingRecord) -> None:
        self.stats["dead_lettered"] += 1
        self._ledger.finish(record)

    # -- commits -------------------------------------------------------------------------

    def _positions(self, states: list[PartitionOffsets] | None = None) -> list[TopicPartition]:
        return [
            TopicPartition(state.topic, state.partition, position)
            for state, position in self._ledger.positions(states)
        ]

    def _maybe_commit(self) -> None:
        now = time.monotonic()
        if now - self._last_commit < self.config.commit.interval_ms / 1000:
            return
        self._last_commit = now
        self._commit(sync=False)
        self._update_lag()

    def _commit(self, *, sync: bool, states: list[PartitionOffsets] | None = None) -> None:
        """Commit the resolved prefixes. ``sync=True`` only where no rebalance callback can
        be waiting on this thread: in the poll thread (the executor) or from a callback."""
        offsets = self._positions(states)
        if offsets and self._commit_offsets(offsets, sync=sync):
            self._mark_committed(offsets, states)

    def _commit_offsets(self, offsets: list[TopicPartition], *, sync: bool) -> bool:
        try:
            self.consumer.commit(offsets=offsets, asynchronous=not sync)
        except Exception as exc:  # KafkaException: no coordinator, rebalance in progress...
            metrics.COMMITS.labels("failed").inc()
            log.warning("commit failed (will retry): %s", exc)
            return False
        if sync:
            metrics.COMMITS.labels("ok").inc()
        return True

    def _mark_committed(
        self, offsets: list[TopicPartition], states: list[PartitionOffsets] | None = None
    ) -> None:
        by_key = {(tp.topic, tp.partition): tp.offset for tp in offsets}
        for key, position in by_key.items():
            self._ledger.committed(key, position)
        if states is not None:
            for state in states:
                state.committed = by_key.get((state.topic, state.partition), state.committed)

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = err is not None or any(tp.error is not None for tp in partitions)
        metrics.COMMITS.labels("failed" if failed else "ok").inc()
        if failed:
            reason = err.str() if err else "partition error"
            if err is not None and err.code() in kafka.REBALANCE_COMMIT_ERRORS:
                # Routine while the group rebalances: the partition's next owner starts from
                # the last accepted commit and Stripe drops the repeats by identifier.
                log.info("commit refused during a rebalance (%s); retried after it", reason)
            else:
                log.warning("commit failed: %s; retried at the next commit interval", reason)
            # Committing again later is safe: positions only move forward.
            for tp in partitions:
                key = (tp.topic, tp.partition)
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._ledger.commit_failed, key)

    def _update_lag(self) -> None:
        for state in self._ledger.partitions.values():
            tp = TopicPartition(state.topic, state.partition)
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # noqa: S112 - lag is best effort; the next interval tries again
                continue
            position = state.position()
            if high is None or high < 0 or position is None:
                continue
            metrics.CONSUMER_LAG.labels(state.topic, str(state.partition)).set(
                max(0, high - position)
            )

    # -- backpressure and health ---------------------------------------------------------

    def _apply_backpressure(self) -> None:
        bound = self.config.batching.max_buffered_records
        # Held, not just unresolved: records resolved behind an unresolved one keep their
        # Kafka message in memory too (an unwritable dead-letter topic holds them all).
        held = self._ledger.held
        metrics.BUFFERED_RECORDS.set(held)
        partitions = self._ledger.partitions
        assignment = [TopicPartition(t, p) for t, p in partitions]
        if self._newly_assigned:
            # Newcomers follow the current state; resuming also clears a pause that
            # librdkafka kept from an earlier assignment of the same partition.
            fresh = [tp for tp in self._newly_assigned if (tp.topic, tp.partition) in partitions]
            self._newly_assigned = []
            if fresh:
                (self.consumer.pause if self._paused else self.consumer.resume)(fresh)
        if not self._paused and held >= bound and assignment:
            self.consumer.pause(assignment)
            self._paused = True
            metrics.PAUSED_PARTITIONS.set(len(assignment))
            # DEBUG: under a backlog this cycles many times a second; the gauge tells.
            log.debug("paused fetching: %d records held until resolved", held)
        elif self._paused and held <= bound * RESUME_FRACTION:
            if assignment:
                self.consumer.resume(assignment)
            self._paused = False
            metrics.PAUSED_PARTITIONS.set(0)
            log.debug("resumed fetching")

    async def _await_room(self, seconds: float) -> None:
        """Wait until enough buffered records are resolved to resume fetching, or ``seconds``."""
        assert self._changed is not None
        resume_at = self.config.batching.max_buffered_records * RESUME_FRACTION
        deadline = time.monotonic() + seconds
        while self._ledger.held > resume_at:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _update_health(self) -> None:
        health = self.health
        health.beat()
        report_repeats()
        health.set_problem(
            "stripe",
            self._delivery.problem(not_ready_after=self.config.delivery.not_ready_after_seconds),
        )
        health.set_problem("dead_letter", self._dlq.problem)
        health.set_problem("kafka", self._kafka_problem)
        expiry = self._sessions.seconds_until_expiry()
        if expiry is not None:
            metrics.SESSION_EXPIRY.set(expiry)

    def _on_kafka_stats(self, stats: str) -> None:
        """librdkafka's statistics (poll thread): Kafka is fine while a broker is connected."""
        try:
            brokers = orjson.loads(stats).get("brokers") or {}
        except orjson.JSONDecodeError:
            return
        # nodeid -1: a bootstrap address, not a broker of the cluster.
        if any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values()):
            self._kafka_problem = None
        elif brokers and self._kafka_problem is None:
            self._kafka_problem = "Kafka: no broker connected"

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) or err.fatal():
            self._kafka_problem = f"Kafka: {err.str()}"
        log.warning("Kafka: %s", err.str())  # repeats are throttled by connector.logs

    # -- burst mode ----------------------------------------------------------------------

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

    def _backlog_done(self) -> bool:
        """Whether the group has committed every partition of its topics up to the end.

        Runs in the poll thread (blocking calls with short timeouts). Burst mode means "the
        backlog is billed", not "my share is": a worker without partitions (more workers
        than partitions, or a crashed member holding them until its session times out)
        must not declare the job finished early. Committed offsets are read through a
        second consumer that never subscribes, on its own connection: the consumer's
        coordinator connection can be held by a JoinGroup during a rebalance, and this
        check must never stall polling. Not through AdminClient: its
        ListConsumerGroupOffsets crashes the process on a NOT_COORDINATOR answer, which is
        what a group gets right after a broker restart (librdkafka issue #5040).
        """
        try:
            return self._committed_to_end()
        except KafkaException as exc:
            log.debug("burst-mode check postponed: %s", exc)
            return False

    def _committed_to_end(self) -> bool:
        partitions: list[TopicPartition] = []
        for topic in self.config.kafka.topics:
            metadata = self.consumer.list_topics(topic, timeout=IDLE_CHECK_TIMEOUT_SECONDS)
            described = metadata.topics.get(topic)
            if described is None or described.error is not None:
                return False
            partitions.extend(TopicPartition(topic, p) for p in sorted(described.partitions))
        if self._offsets_reader is None:
            self._offsets_reader = Consumer(kafka.offsets_reader_properties(self.config.kafka))
        answer = self._offsets_reader.committed(partitions, timeout=IDLE_CHECK_TIMEOUT_SECONDS)
        for tp in answer:
            low, high = self.consumer.get_watermark_offsets(
                TopicPartition(tp.topic, tp.partition),
                timeout=IDLE_CHECK_TIMEOUT_SECONDS,
                cached=False,
            )
            if tp.offset == OFFSET_INVALID or tp.offset < 0:
                if self.config.kafka.auto_offset_reset == "earliest" and low < high:
                    return False
            elif tp.offset < high:
                return False
        return True

    # -- rebalances ----------------------------------------------------------------------

    def _in_loop(self, coro: Coroutine[Any, Any, _T]) -> _T | None:
        """Run ``coro`` on the event loop from the poll thread and wait for it."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except Exception:
            # librdkafka would swallow it: say it loudly instead.
            log.exception("rebalance handling failed")
            return None

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._in_loop(self._assigned(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # The loop drains and says what to commit; the commit itself happens here, in the
        # poll thread inside the callback: a synchronous commit from the loop thread would
        # wait for a rebalance that waits for this callback.
        offsets = self._in_loop(self._revoked(partitions, lost=False))
        if offsets:
            self._commit_offsets(offsets, sync=True)

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._in_loop(self._revoked(partitions, lost=True))

    async def _assigned(self, partitions: list[TopicPartition]) -> None:
        self._ledger.assign((tp.topic, tp.partition) for tp in partitions)
        # Not paused here: pause() from this thread while the poll thread waits in the
        # rebalance callback deadlocks librdkafka. _apply_backpressure does it next turn.
        self._newly_assigned.extend(partitions)
        self._last_activity = time.monotonic()
        metrics.REBALANCES.labels("assigned").inc()
        metrics.ASSIGNED_PARTITIONS.set(len(self._ledger))
        log.info("assigned %s", _names(partitions))

    async def _revoked(
        self, partitions: list[TopicPartition], *, lost: bool
    ) -> list[TopicPartition]:
        """Drain (or, when lost, abandon) these partitions; return the offsets to commit."""
        states = [
            state
            for tp in partitions
            if (state := self._ledger.get(tp.topic, tp.partition)) is not None
        ]
        offsets: list[TopicPartition] = []
        if not lost and states:
            deadline = getattr(self, "_drain_deadline", None) or (
                time.monotonic() + self.config.shutdown.drain_timeout_seconds
            )
            await self._drain(states, deadline)
            offsets = self._positions(states)
        for state in states:
            abandoned = self._ledger.close(state)
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

    async def _drain(self, states: list[PartitionOffsets], deadline: float) -> None:
        """Send what is buffered for these partitions and wait until resolved or deadline."""
        assert self._changed is not None
        self._dispatch(force=True)
        while any(state.unresolved for state in states):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            self._dispatch(force=True)
            self._dlq.poll()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.05))
            except TimeoutError:
                continue


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
    """Run one worker to completion on a fresh event loop (SIGTERM/SIGINT stop it)."""
    worker = Worker(config, health=health, workers=workers, index=index, until_idle=until_idle)

    async def main() -> None:
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.request_stop)
        if on_ready is not None:
            on_ready(worker)
        await worker.run()

    asyncio.run(main())
    return worker
