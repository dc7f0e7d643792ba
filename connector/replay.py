"""``meterstream replay``: bill dead letters again once their cause is fixed.

Reads the dead-letter topic with its own consumer group, ``<kafka.group_id>.replay``, by
``assign()`` on every partition (it never joins a group: one replay process at a time),
from that group's committed offsets (the earliest offset when none) up to the end offsets
taken when it starts, so the letters it writes back are never read again in the same run.

Each selected letter's record (the letter's value, unchanged) is decoded and mapped again
with the current configuration, with the identifiers the connector would have used: the
topic, partition and offset of derived identifiers and the Kafka timestamp fallback come
from the letter's ``meterstream.source.*`` headers. A replay interrupted and run again
therefore sends the same identifiers, and Stripe drops the repeats (docs/replay.md, "Billed
once"). Events go out through the same machinery as ``run`` (``Batcher``, ``Delivery`` with
a shared ``SessionProvider``, ``StripeSink``, ``RateLimiter``); what still fails is written
back to the dead-letter topic with its new reason and ``meterstream.attempts`` + 1. The
replay group's offsets are committed only up to the contiguous resolved prefix
(``OffsetLedger``), as in ``run``.

Exit 0 when the run finished (letters dead-lettered again included: they are in the DLQ
with their reason), 1 when it could not (no progress for ``--timeout`` seconds, or
interrupted: what resolved is committed), 2 for a bad invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from connector.config import MeterstreamConfig, load_config
from connector.errors import (
    DEAD_LETTER_REASONS,
    RETIRED_DEAD_LETTER_REASONS,
    ConfigError,
    DeadLetterReason,
)
from connector.registry_decode import value_decoder
from connector.replay_report import Report
from connector.runner import add_config_argument
from connector.timestamps import format_rfc3339_ms, parse_timestamp

if TYPE_CHECKING:  # imported when used: `meterstream --help` must not pay for Kafka and httpx
    from connector.batching import Batch
    from connector.dlq import LetterOrigin
    from connector.mapping import MeterEventBody
    from connector.meters import MeterCatalog
    from connector.offsets import PendingRecord

log = logging.getLogger("meterstream.replay")

#: The reasons a fix elsewhere (a meter created, the mapping corrected) can cure.
DEFAULT_REASONS: tuple[DeadLetterReason, ...] = (
    "no_active_meter",
    "meter_payload_mismatch",
    "mapping_error",
    "rejected_by_stripe",
)
#: The replay's consumer group is the connector's with this suffix.
GROUP_SUFFIX = ".replay"
#: Give up (exit 1) after this long without progress: Stripe or Kafka down.
DEFAULT_TIMEOUT_SECONDS = 300.0
#: Longest a poll blocks: bounds how late linger, commits and the end are noticed.
POLL_TIMEOUT_SECONDS = 0.1
#: Broker calls at start (metadata, committed offsets, watermarks) and the final commit.
KAFKA_TIMEOUT_SECONDS = 30.0
#: Fetching resumes once held records fall to this fraction of batching.max_buffered_records.
RESUME_FRACTION = 0.5
#: Shown for a record in the dead-letter topic without meterstream's source headers.
NOT_A_LETTER = "(not a dead letter)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``meterstream replay``."""
    add_config_argument(
        parser,
        "the connector's YAML config (default: $METERSTREAM_CONFIG), with the fix "
        "applied: its dead-letter topic, group, mapping and Stripe settings are used",
    )
    parser.add_argument(
        "--reason",
        action="append",
        default=None,
        metavar="REASON",
        help="replay letters with this meterstream.reason (repeatable; default: "
        + ", ".join(DEFAULT_REASONS)
        + "). Letters with other reasons are skipped and committed past",
    )
    parser.add_argument(
        "--since",
        metavar="TIME",
        default=None,
        help="only letters written at or after TIME (RFC 3339, by the letter's Kafka "
        "timestamp); older ones are skipped and committed past",
    )
    parser.add_argument(
        "--until",
        metavar="TIME",
        default=None,
        help="stop each partition at its first letter written after TIME (RFC 3339): that "
        "letter and the ones after it are left for a later run, not committed past",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="map the selected letters and report what would be billed and what would fail "
        "and why; send nothing, write nothing, commit nothing",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="give up (exit 1, what resolved is committed) when nothing has moved for this "
        f"long, e.g. Stripe down (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines for humans (text) or JSON (default: logging.format from the config)",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=None,
        help="default: logging.level from the config, INFO",
    )


# -- what is replayed -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """Which letters a run replays: by reason, and by the letter's Kafka timestamp."""

    reasons: frozenset[str]
    since_ms: int | None = None
    until_ms: int | None = None

    def after_until(self, timestamp_ms: int) -> bool:
        """Whether a letter lies past ``--until`` (its partition stops there)."""
        return self.until_ms is not None and timestamp_ms > self.until_ms

    def selects(self, reason: str, timestamp_ms: int) -> bool:
        """Whether a letter (not past ``--until``) is replayed in this run."""
        if reason not in self.reasons:
            return False
        return self.since_ms is None or timestamp_ms >= self.since_ms


def parse_time(value: str, flag: str) -> int:
    """Epoch milliseconds of an RFC 3339 time; ConfigError naming ``flag`` otherwise."""
    try:
        return round(parse_timestamp(value) * 1000)
    except ValueError as exc:
        raise ConfigError(
            [(flag, f"{value!r} is not an RFC 3339 time ({exc}), e.g. 2026-12-01T00:00:00Z")]
        ) from None


def selection_from(args: argparse.Namespace) -> Selection:
    """The selection the flags ask for; ConfigError for an unknown reason or empty window."""
    reasons = args.reason or list(DEFAULT_REASONS)
    known = (*DEAD_LETTER_REASONS, *RETIRED_DEAD_LETTER_REASONS)
    unknown = sorted(set(reasons) - set(known))
    if unknown:
        raise ConfigError(
            [
                (
                    "--reason",
                    f"unknown reason {', '.join(map(repr, unknown))}; one of {', '.join(known)}",
                )
            ]
        )
    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    if since is not None and until is not None and until < since:
        raise ConfigError([("--until", f"must not be before --since ({args.since})")])
    if args.timeout <= 0:
        raise ConfigError([("--timeout", "must be more than 0 seconds")])
    return Selection(frozenset(reasons), since, until)


# -- the run ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Span:
    """Offsets [start, end) of one dead-letter partition to read in this run."""

    partition: int
    start: int
    end: int


@dataclass(slots=True)
class _Replaying:
    """A selected letter on its way: where its record came from, and its new reason."""

    origin: LetterOrigin
    new_reason: str | None = None
    new_message: str = ""


class Replayer:
    """One replay run: read, map, send or dead-letter again, commit; see the module doc."""

    def __init__(
        self,
        config: MeterstreamConfig,
        selection: Selection,
        *,
        dry_run: bool,
        timeout: float,
    ) -> None:
        from connector.batching import Batcher
        from connector.mapping import Mapper
        from connector.offsets import OffsetLedger

        self.config = config
        self.selection = selection
        self.dry_run = dry_run
        self.timeout = timeout
        self.topic = config.kafka.dead_letter_topic
        self.group_id = config.kafka.group_id + GROUP_SUFFIX
        self.report = Report(self.topic, self.group_id, dry_run)
        self._mapper = Mapper(config.mapping)
        self._decode = value_decoder(config)
        self._batcher = Batcher(config.batching.max_events, config.batching.linger_ms / 1000)
        self._ledger = OffsetLedger(on_resolved=self._progressed)
        self._letters: dict[PendingRecord, _Replaying] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready: list[Batch] = []
        #: Partitions still being read, and where each one ends.
        self._reading: dict[int, _Span] = {}
        self._paused = False
        self._stopping = False
        self._last_progress = time.monotonic()
        self._last_commit = 0.0
        self._changed = asyncio.Event()
        self._catalog: MeterCatalog | None = None
        #: Connected accounts' meters, listed when their first letter comes; letters wait
        #: in ``_parked`` meanwhile.
        self._account_catalogs: dict[str, MeterCatalog] = {}
        self._parked: dict[str, list[tuple[PendingRecord, list[MeterEventBody]]]] = {}
        self._customer_keys = {
            entry.event_name: entry.customer_payload_key or config.mapping.customer_payload_key
            for entry in config.mapping.fan_out
        }
        self._value_keys = {
            entry.event_name: entry.value_payload_key or config.mapping.value_payload_key
            for entry in config.mapping.fan_out
        }

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: stop reading, finish what is in flight, commit, exit 1."""
        self._stopping = True
        self._changed.set()

    def _progressed(self) -> None:
        self._last_progress = time.monotonic()
        self._changed.set()

    # -- start --------------------------------------------------------------------------

    def _consumer(self) -> Any:
        from confluent_kafka import Consumer

        return Consumer(
            {
                **self.config.kafka.common_properties(),
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "logger": logging.getLogger("meterstream.kafka.replay"),
            }
        )

    def _plan(self, consumer: Any) -> list[_Span]:
        """Per partition of the DLQ: from the group's commit (or the earliest offset) to
        the end offset now. Runs in the Kafka thread."""
        from confluent_kafka import KafkaException, TopicPartition

        from connector.errors import MeterstreamError

        try:
            metadata = consumer.list_topics(self.topic, timeout=KAFKA_TIMEOUT_SECONDS)
            described = metadata.topics.get(self.topic)
            if described is None or described.error is not None:
                why = described.error.str() if described is not None and described.error else "?"
                raise MeterstreamError(
                    f"cannot read the dead-letter topic {self.topic!r} (kafka.dead_letter_topic)"
                    f": {why}"
                )
            partitions = [TopicPartition(self.topic, p) for p in sorted(described.partitions)]
            commits = consumer.committed(partitions, timeout=KAFKA_TIMEOUT_SECONDS)
            spans = []
            for tp in commits:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, tp.partition), timeout=KAFKA_TIMEOUT_SECONDS
                )
                # Never committed: the earliest letter. Committed below the earliest (the
                # topic's retention deleted letters): from what is left.
                start = max(tp.offset, low) if tp.offset >= 0 else low
                spans.append(_Span(tp.partition, start, max(start, high)))
        except KafkaException as exc:
            raise MeterstreamError(
                f"cannot read offsets of {self.topic!r} from Kafka: {exc.args[0].str()}"
            ) from None
        return spans

    async def _meters(self) -> MeterCatalog:
        """The meters list, as ``run`` checks events against it (``meters.preflight``)."""
        from connector.errors import MeterstreamError
        from connector.meters import ensure_mapping_fits, fetch_catalog

        try:
            async with asyncio.timeout(self.timeout):
                catalog = await fetch_catalog(self.config)
        except TimeoutError:
            raise MeterstreamError(
                f"Stripe unreachable for {self.timeout:g} s (--timeout) listing billing meters"
            ) from None
        if not self.config.mapping.stripe_account:  # else: checked per account's meters
            ensure_mapping_fits(catalog, self.config.mapping)
        return catalog

    async def _list_parked(self) -> None:
        """List the meters of the accounts whose letters wait, then check and send those."""
        from connector.errors import MeterstreamError
        from connector.meters import MeterCatalog, list_meters
        from connector.stripe_v1 import retry_outages

        config = self.config
        api_key = config.require_api_key()
        for account in list(self._parked):
            try:
                async with asyncio.timeout(self.timeout):
                    meters = await retry_outages(
                        functools.partial(list_meters, config.stripe, api_key, account=account),
                        doing=f"listing billing meters of {account}",
                        initial_seconds=config.delivery.backoff_initial_seconds,
                        max_seconds=config.delivery.backoff_max_seconds,
                        attempts=None,
                    )
            except TimeoutError:
                raise MeterstreamError(
                    f"Stripe unreachable for {self.timeout:g} s (--timeout) listing billing "
                    f"meters of {account}"
                ) from None
            self._account_catalogs[account] = MeterCatalog(meters, account=account)
            for record, events in self._parked.pop(account):
                self._send_checked(record, events)

    # -- the loop -----------------------------------------------------------------------

    async def run(self) -> Report:
        """Replay until every selected letter is resolved (or no progress for --timeout)."""
        from confluent_kafka import TopicPartition

        loop = asyncio.get_running_loop()
        kafka_thread = ThreadPoolExecutor(1, thread_name_prefix="replay-kafka")
        consumer = self._consumer()
        self._consumer_handle = consumer
        sink = None
        try:
            spans = await loop.run_in_executor(kafka_thread, self._plan, consumer)
            self._reading = {span.partition: span for span in spans if span.end > span.start}
            self._catalog = await self._meters()
            log.info(
                "replaying %s as group %s: %d letters in %d of its %d partitions%s",
                self.topic,
                self.group_id,
                sum(span.end - span.start for span in self._reading.values()),
                len(self._reading),
                len(spans),
                " (dry run)" if self.dry_run else "",
            )
            self._ledger.assign((self.topic, p) for p in self._reading)
            if not self.dry_run:
                sink = self._start_sending()
            if self._reading:
                consumer.assign(
                    [
                        TopicPartition(self.topic, s.partition, s.start)
                        for s in spans
                        if s.end > s.start
                    ]
                )
            await self._loop(loop, kafka_thread, consumer)
        finally:
            await self._finish(loop, kafka_thread, consumer)
            if sink is not None:
                await sink.aclose()
        return self.report

    def _start_sending(self) -> Any:
        from connector.delivery import Delivery
        from connector.dlq import DeadLetterQueue
        from connector.ratelimit import RateLimiter
        from connector.session import AccountSessions
        from connector.sink import StripeSink

        config = self.config
        sink = StripeSink(
            config.stripe,
            config.require_api_key(),
            max_connections=config.batching.max_in_flight,
        )

        async def create_session(account: str | None) -> Any:
            session = await sink.create_session(account)
            log.info("meter event session %s created", session.id)
            return session

        sessions = AccountSessions(
            create_session, renew_margin_seconds=config.stripe.session_renew_margin_seconds
        )
        self._delivery = Delivery(
            sink,
            sessions,
            config.delivery,
            limiter=RateLimiter(config.rate_limit, workers=1),
            on_accepted=self._accepted,
            on_dead=self._refused,
        )
        self._dlq = DeadLetterQueue(config.kafka, on_written=self._written)
        return sink

    async def _loop(
        self, loop: asyncio.AbstractEventLoop, kafka_thread: Any, consumer: Any
    ) -> None:
        max_records = self.config.kafka.poll_max_records
        self._last_progress = time.monotonic()
        while not self._stopping:
            if self._reading and not self._paused:
                messages = await loop.run_in_executor(
                    kafka_thread, consumer.consume, max_records, self._poll_timeout()
                )
                if messages:
                    self._ingest(messages, consumer)
            if self._parked:
                await self._list_parked()
            self._dispatch(force=not self._reading)
            if not self.dry_run:
                self._dlq.poll()
                await self._maybe_commit(loop, kafka_thread, consumer)
            self._backpressure(consumer)
            if self._done():
                self.report.finished = True
                return
            if time.monotonic() - self._last_progress > self.timeout:
                self.report.problem = self._why_stuck()
                log.error("giving up: %s", self.report.problem)
                return
            if not self._reading or self._paused:
                await self._wait(self._poll_timeout())
        self.report.problem = "interrupted"

    def _poll_timeout(self) -> float:
        due = self._batcher.seconds_until_due()
        if due is None:
            return POLL_TIMEOUT_SECONDS
        return min(POLL_TIMEOUT_SECONDS, max(due, 0.001))

    async def _wait(self, seconds: float) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout=seconds)

    def _done(self) -> bool:
        if self._reading or self._tasks or self._ready or self._batcher.buffered_events:
            return False
        if self._parked:
            return False
        if not self.dry_run and self._dlq.pending:
            return False
        return self._ledger.unresolved == 0

    def _why_stuck(self) -> str:
        what = f"nothing moved for {self.timeout:g} s (--timeout)"
        if not self.dry_run:
            if self._delivery.last_failure:
                return f"{what}: Stripe: {self._delivery.last_failure}"
            if self._dlq.problem:
                return f"{what}: {self._dlq.problem}"
        if self._reading:
            stuck = ", ".join(f"{self.topic}-{p}" for p in sorted(self._reading))
            return f"{what}: no letters arrived from Kafka for {stuck}"
        return what

    # -- reading ------------------------------------------------------------------------

    def _ingest(self, messages: list[Any], consumer: Any) -> None:
        from confluent_kafka import KafkaError

        from connector.errors import MeterstreamError

        finished: list[int] = []
        for message in messages:
            error = message.error()
            partition = message.partition()
            span = self._reading.get(partition)
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    if span is not None and message.offset() >= span.end:
                        finished.append(partition)
                    continue
                if error.fatal():
                    raise MeterstreamError(f"fatal Kafka error reading {self.topic}: {error.str()}")
                log.warning("Kafka: %s", error.str())
                continue
            if span is None or partition in finished:
                continue  # done already: prefetched letters of a later run
            offset = message.offset()
            if offset >= span.end:
                finished.append(partition)
                continue
            self._last_progress = time.monotonic()
            if not self._take(message, partition, offset):
                self.report.stopped_by_until += 1
                finished.append(partition)
                continue
            if offset >= span.end - 1:
                finished.append(partition)
        if finished:
            from confluent_kafka import TopicPartition

            for partition in finished:
                self._reading.pop(partition, None)
            consumer.pause([TopicPartition(self.topic, p) for p in finished])

    def _take(self, message: Any, partition: int, offset: int) -> bool:
        """Track one letter and start its replay; False when it lies past --until."""
        from connector.dlq import LetterOrigin

        kind, stamp = message.timestamp()
        timestamp_ms = stamp if kind else 0
        try:
            origin: LetterOrigin | None = LetterOrigin.of(message)
        except ValueError as exc:
            origin = None
            log.warning(
                "skipping a record of the dead-letter topic: %s",
                exc,
                extra={"topic": self.topic, "partition": partition, "offset": offset},
            )
        if self.selection.after_until(timestamp_ms):
            return False
        state = self._ledger.get(self.topic, partition)
        assert state is not None, "every partition read is in the ledger"
        record = state.track(message, offset)
        reason = origin.reason if origin is not None else NOT_A_LETTER
        counts = self.report.counts(reason)
        counts.read += 1
        if origin is None or not self.selection.selects(reason, timestamp_ms):
            counts.skipped += 1
            self._ledger.finish(record)
            return True
        self._letters[record] = _Replaying(origin)
        self._replay(record, origin)
        return True

    def _replay(self, record: PendingRecord, origin: LetterOrigin) -> None:
        from connector.errors import RecordError

        try:
            decoded = self._decode(record.message.value())
            events = self._mapper.map(
                decoded,
                topic=origin.topic,
                partition=origin.partition,
                offset=origin.offset,
                kafka_timestamp_ms=origin.timestamp_ms,
            )
            events = _named(events, origin)
            # The account the connector routed it to, as its identifiers are the ones it used.
            record.account = origin.account or self._mapper.account(decoded)
        except RecordError as exc:
            self._fail(record, exc.reason, exc.message)
            return
        account = record.account
        if (
            account is not None
            and self._catalog is not None
            and self._catalog.enabled
            and account not in self._account_catalogs
        ):
            self._parked.setdefault(account, []).append((record, events))
            return
        self._send_checked(record, events)

    def _send_checked(self, record: PendingRecord, events: list[MeterEventBody]) -> None:
        """Check the events against their account's meters; batch them, or fail the letter."""
        from connector.errors import RecordError

        try:
            self._check_meters(events, record.account)
        except RecordError as exc:
            self._fail(record, exc.reason, exc.message)
            return
        if self.dry_run:
            self.report.counts(self._letters[record].origin.reason).billed += 1
            self._resolve(record)
            return
        record.remaining = len(events)
        self._batcher.add(events, record)

    def _check_meters(self, events: list[MeterEventBody], account: str | None) -> None:
        from connector.errors import RecordError

        catalog = self._account_catalogs.get(account) if account else self._catalog
        if catalog is None:
            return
        mapping = self.config.mapping
        for event in events:
            name = event["event_name"]
            problem = catalog.check(
                name,
                self._customer_keys.get(name, mapping.customer_payload_key),
                self._value_keys.get(name, mapping.value_payload_key),
            )
            if problem is not None:
                raise RecordError(problem.reason, problem.message)

    # -- outcomes -----------------------------------------------------------------------

    def _fail(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        message: str,
        request_id: str | None = None,
        event: MeterEventBody | None = None,
    ) -> None:
        """The letter cannot be billed yet: back to the DLQ (in a dry run, only counted)."""
        replaying = self._letters[record]
        if self.dry_run:
            self.report.failed(replaying.origin.reason, reason, message)
            self._resolve(record)
            return
        if replaying.new_reason is None:  # a record whose events fail twice: the first says why
            replaying.new_reason, replaying.new_message = reason, message
        record.dead_lettered = True
        log.info(
            "dead-lettering again as %s: %s",
            reason,
            message,
            extra={
                "topic": self.topic,
                "partition": record.partition.partition,
                "offset": record.offset,
                "reason": reason,
            },
        )
        self._dlq.send(
            record, reason, message, request_id=request_id, event=event, origin=replaying.origin
        )

    def _refused(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        message: str,
        request_id: str | None,
        event: MeterEventBody,
    ) -> None:
        """Delivery's verdict on one event (refused by Stripe, or expired while waiting)."""
        self._ledger.refuse(record, lambda: self._fail(record, reason, message, request_id, event))

    def _accepted(self, batch: Batch, request_id: str | None) -> None:
        for record in batch.records:
            self._ledger.finish(record)
            self._settled(record)

    def _written(self, record: PendingRecord) -> None:
        self._ledger.finish(record)
        self._settled(record)

    def _settled(self, record: PendingRecord) -> None:
        """Count a letter in the report once everything it led to is answered: billed, or
        back in the DLQ (one new letter per event that failed again)."""
        if not record.resolved:
            return
        replaying = self._letters.pop(record, None)
        if replaying is None:
            return
        if not record.dead_lettered:
            self.report.counts(replaying.origin.reason).billed += 1
            return
        assert replaying.new_reason is not None
        self.report.failed(replaying.origin.reason, replaying.new_reason, replaying.new_message)

    def _resolve(self, record: PendingRecord) -> None:
        self._letters.pop(record, None)
        self._ledger.finish(record)

    # -- sending ------------------------------------------------------------------------

    def _dispatch(self, *, force: bool = False) -> None:
        if self.dry_run or self._stopping:
            return
        self._ready.extend(self._batcher.due(force=force))
        limit = self.config.batching.max_in_flight
        while self._ready and len(self._tasks) < limit:
            task = asyncio.create_task(self._delivery.deliver(self._ready.pop(0)))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed unexpectedly", exc_info=task.exception())
        self._changed.set()
        self._dispatch(force=not self._reading)

    def _backpressure(self, consumer: Any) -> None:
        """Pause reading while the ledger holds too many letters (docs/architecture.md,
        "Bounded"); resume at half."""
        from confluent_kafka import TopicPartition

        bound = self.config.batching.max_buffered_records
        held = self._ledger.held
        reading = [TopicPartition(self.topic, p) for p in self._reading]
        if not self._paused and held >= bound:
            self._paused = True
            if reading:
                consumer.pause(reading)
        elif self._paused and held <= bound * RESUME_FRACTION:
            self._paused = False
            if reading:
                consumer.resume(reading)

    # -- commits ------------------------------------------------------------------------

    async def _maybe_commit(
        self, loop: asyncio.AbstractEventLoop, kafka_thread: Any, consumer: Any
    ) -> None:
        now = time.monotonic()
        if now - self._last_commit < self.config.commit.interval_ms / 1000:
            return
        self._last_commit = now
        await self._commit(loop, kafka_thread, consumer)

    async def _commit(
        self, loop: asyncio.AbstractEventLoop, kafka_thread: Any, consumer: Any
    ) -> bool:
        """Commit the contiguous resolved prefix of every partition; False if Kafka refused."""
        from confluent_kafka import TopicPartition

        positions = self._ledger.positions()
        if not positions:
            return True
        offsets = [
            TopicPartition(state.topic, state.partition, position) for state, position in positions
        ]

        def commit() -> None:
            consumer.commit(offsets=offsets, asynchronous=False)

        try:
            await loop.run_in_executor(kafka_thread, commit)
        except Exception as exc:  # KafkaException: no coordinator, a member of the group...
            log.warning("commit to group %s failed (retried): %s", self.group_id, exc)
            return False
        for state, position in positions:
            self._ledger.committed((state.topic, state.partition), position)
        return True

    async def _finish(
        self, loop: asyncio.AbstractEventLoop, kafka_thread: Any, consumer: Any
    ) -> None:
        """Drain (when interrupted), stop what still waits, commit what resolved, close."""
        try:
            if not self.dry_run and hasattr(self, "_delivery"):
                if self.report.problem == "interrupted":
                    await self._drain(self.config.shutdown.drain_timeout_seconds)
                for task in list(self._tasks):
                    task.cancel()
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                self._dlq.flush(2.0)
                if not await self._commit(loop, kafka_thread, consumer) and self.report.finished:
                    self.report.finished = False
                    self.report.problem = f"the final commit to group {self.group_id} failed"
        finally:
            await loop.run_in_executor(kafka_thread, consumer.close)
            kafka_thread.shutdown(wait=False)

    async def _drain(self, seconds: float) -> None:
        """Interrupted: let requests in flight and letters being written finish (nothing
        new is sent), for at most ``seconds``; what waits in batches stays for the next run."""
        self._stopping = True
        deadline = time.monotonic() + seconds
        while (self._tasks or self._dlq.pending) and time.monotonic() < deadline:
            self._dlq.poll()
            await self._wait(min(0.05, max(0.0, deadline - time.monotonic())))


def _named(events: list[MeterEventBody], origin: LetterOrigin) -> list[MeterEventBody]:
    """A fanned-out record whose letter names one event: that event only (the others were
    billed when the letter was written)."""
    from connector.errors import RecordError

    if len(events) <= 1 or origin.event_name is None:
        return events
    kept = [event for event in events if event["event_name"] == origin.event_name]
    if not kept:
        raise RecordError(
            "mapping_error",
            f"the letter names event {origin.event_name!r}, which the current mapping no "
            "longer produces for this record",
        )
    return kept


def main(args: argparse.Namespace) -> int:
    """Run one replay; see the module docstring for the exit codes."""
    from connector.logs import configure as configure_logging

    selection = selection_from(args)
    overrides: dict[str, Any] = {}
    if args.log_format:
        overrides.setdefault("logging", {})["format"] = args.log_format
    if args.log_level:
        overrides.setdefault("logging", {})["level"] = args.log_level
    config = load_config(args.config, overrides=overrides)
    config.require_api_key()
    configure_logging(
        config.logging.level, config.logging.format, repeat_seconds=config.logging.repeat_seconds
    )
    if selection.since_ms is not None or selection.until_ms is not None:
        log.info(
            "letters written in [%s, %s]",
            format_rfc3339_ms(selection.since_ms / 1000) if selection.since_ms else "-",
            format_rfc3339_ms(selection.until_ms / 1000) if selection.until_ms else "-",
        )

    async def replay() -> Report:
        replayer = Replayer(config, selection, dry_run=args.dry_run, timeout=args.timeout)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, replayer.request_stop)
        return await replayer.run()

    report = asyncio.run(replay())
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return 0 if report.finished else 1
