"""The dead-letter producer: unbillable records kept with the reason, never lost.

The original key, value and headers are written unchanged, plus ``meterstream.*`` headers
saying why and where from (docs/architecture.md, "Dead letters"). The producer is
idempotent; a record's offset is resolved only from the delivery report, and a failed
delivery is tried again (with backoff) instead of being dropped, so no commit passes a
record the DLQ has not confirmed.

Headers added (all UTF-8 strings):

    meterstream.reason            a stable code from connector.errors.DEAD_LETTER_REASONS
    meterstream.message           what is wrong, for a human
    meterstream.request_id        Stripe's Request-Id (rejected_by_stripe)
    meterstream.event_name        the event at fault (fan-out records send several)
    meterstream.event_identifier  its identifier
    meterstream.aggregate_identifier  the aggregate event that summed it (aggregation)
    meterstream.source.topic / .partition / .offset / .timestamp (ms since the epoch)
    meterstream.version           the connector version that dead-lettered it
    meterstream.attempts          how many times Stripe was asked (0 for local rejections)
    meterstream.stripe_account    the connected account it was routed to (replay keeps it)

A letter about a record read back from the dead-letter topic (``meterstream replay``) is
written with ``send(..., origin=LetterOrigin.of(message))``: the original key, value and
headers, the ``source.*`` headers of the old letter (the record's first home, not the
DLQ's coordinates), and ``attempts`` one more than the old letter's (docs/replay.md).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer

from connector import __version__, kafka, metrics
from connector.config import KafkaConfig
from connector.errors import DeadLetterReason
from connector.mapping import MeterEventBody
from connector.offsets import PendingRecord

log = logging.getLogger("meterstream.dlq")

HEADER_PREFIX = "meterstream."
#: Longest human message kept in a header (Kafka headers have no fixed limit; keep sane).
_MAX_MESSAGE_CHARS = 2000
#: Backoff for re-producing after a failed delivery report. The cap is short because an
#: unwritable dead-letter topic holds every commit back: once it is fixed, the first retry
#: that gets through (and with it every waiting letter) should come within seconds.
_RETRY_INITIAL_SECONDS = 0.5
_RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class LetterOrigin:
    """Where a dead letter's record first came from, read back from the letter's headers.

    ``headers`` are the record's own (every header not named ``meterstream.*``), in order;
    ``timestamp`` is the source's ``source.timestamp`` text ("" when it had none).
    """

    topic: str
    partition: int
    offset: int
    timestamp: str
    attempts: int
    reason: str
    event_name: str | None
    headers: list[tuple[str, bytes]]
    #: The connected account the record was routed to (``stripe_account``), if any.
    account: str | None = None

    @property
    def timestamp_ms(self) -> int | None:
        """The source record's Kafka timestamp in ms, None when it had none."""
        return int(self.timestamp) if self.timestamp else None

    @classmethod
    def of(cls, message: Any) -> LetterOrigin:
        """The origin of a letter (a confluent_kafka Message); ValueError when the message
        is not a meterstream dead letter (no or unreadable ``meterstream.source.*``)."""
        own: list[tuple[str, bytes]] = []
        ours: dict[str, str] = {}
        for key, value in message.headers() or ():
            if key.startswith(HEADER_PREFIX):
                ours[key[len(HEADER_PREFIX) :]] = (value or b"").decode("utf-8", "replace")
            else:
                own.append((key, value))
        try:
            timestamp = ours.get("source.timestamp", "")
            if timestamp:
                int(timestamp)
            return cls(
                topic=ours["source.topic"],
                partition=int(ours["source.partition"]),
                offset=int(ours["source.offset"]),
                timestamp=timestamp,
                attempts=int(ours.get("attempts") or 0),
                reason=ours.get("reason", ""),
                event_name=ours.get("event_name") or None,
                headers=own,
                account=ours.get("stripe_account") or None,
            )
        except (KeyError, ValueError) as exc:
            raise ValueError(
                f"not a meterstream dead letter (header {exc} missing or bad)"
            ) from None


class _Letter:
    __slots__ = ("attempts", "headers", "next_try", "reason", "record")

    def __init__(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        headers: list[tuple[str, bytes]],
    ) -> None:
        self.record = record
        self.reason = reason
        self.headers = headers
        self.attempts = 0
        self.next_try = 0.0


def _unheard(_record: PendingRecord) -> None:
    raise RuntimeError("DeadLetterQueue has no listener: call listen() before send()")


class DeadLetterQueue:
    """Writes dead letters and calls ``on_written(record)`` once each is confirmed."""

    def __init__(
        self,
        config: KafkaConfig,
        *,
        on_written: Callable[[PendingRecord], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = config.dead_letter_topic
        props = kafka.producer_properties(config, error_cb=self._on_error)
        self._producer = Producer(props)
        self._on_written: Callable[[PendingRecord], None] = on_written or _unheard
        self._clock = clock
        self._retry: deque[_Letter] = deque()
        self.pending = 0
        #: Why the DLQ is not writable right now (for /readyz), None when it is.
        self.problem: str | None = None

    def listen(self, *, on_written: Callable[[PendingRecord], None]) -> None:
        """Who is told when a letter is confirmed (the loop that owns the records)."""
        self._on_written = on_written

    def send(
        self,
        record: PendingRecord,
        reason: DeadLetterReason,
        message: str,
        *,
        request_id: str | None = None,
        event: MeterEventBody | None = None,
        attempts: int = 0,
        origin: LetterOrigin | None = None,
        aggregate: str | None = None,
    ) -> None:
        """Queue the record for the dead-letter topic; resolution comes with the report.

        With ``origin`` the record is itself a dead letter: the new letter keeps the
        original headers and source, and ``attempts`` becomes ``origin.attempts + 1``.
        ``aggregate`` names the aggregate event that summed the record, when Stripe refused
        that aggregate (docs/aggregation.md).
        """
        msg = record.message
        if origin is None:
            timestamp_type, timestamp_ms = msg.timestamp()
            source = [
                ("source.topic", msg.topic()),
                ("source.partition", str(msg.partition())),
                ("source.offset", str(msg.offset())),
                ("source.timestamp", str(timestamp_ms) if timestamp_type else ""),
            ]
            headers = list(msg.headers() or [])
        else:
            source = [
                ("source.topic", origin.topic),
                ("source.partition", str(origin.partition)),
                ("source.offset", str(origin.offset)),
                ("source.timestamp", origin.timestamp),
            ]
            headers = list(origin.headers)
            attempts = origin.attempts + 1
        extra: list[tuple[str, str]] = [
            ("reason", reason),
            ("message", message[:_MAX_MESSAGE_CHARS]),
            *source,
            ("version", __version__),
            ("attempts", str(attempts)),
        ]
        if request_id:
            extra.append(("request_id", request_id))
        account = record.account or (origin.account if origin is not None else None)
        if account:
            extra.append(("stripe_account", account))
        if event is not None:
            extra.append(("event_name", event["event_name"]))
            extra.append(("event_identifier", event["identifier"]))
        if aggregate is not None:
            extra.append(("aggregate_identifier", aggregate))
        headers.extend((HEADER_PREFIX + key, value.encode()) for key, value in extra)
        letter = _Letter(record, reason, headers)
        self.pending += 1
        self._produce(letter)

    def _produce(self, letter: _Letter) -> None:
        msg = letter.record.message
        letter.attempts += 1
        try:
            self._producer.produce(
                self.topic,
                key=msg.key(),
                value=msg.value(),
                headers=list(letter.headers),
                on_delivery=lambda err, _msg: self._delivered(letter, err),
            )
        except BufferError:
            self._schedule_retry(letter, "the producer queue is full")
        except Exception as exc:  # KafkaException for unknown topics, bad sizes, ...
            self._schedule_retry(letter, str(exc))

    def _delivered(self, letter: _Letter, err: KafkaError | None) -> None:
        if err is not None:
            self._schedule_retry(letter, err.str())
            return
        self.pending -= 1
        if self.problem is not None:
            log.info("dead-letter topic %s writable again", self.topic)
            # The topic takes writes again: letters waiting out their backoff (up to
            # _RETRY_MAX_SECONDS) go now, so commits resume at once, not a backoff later.
            now = self._clock()
            for waiting in self._retry:
                waiting.next_try = min(waiting.next_try, now)
        self.problem = None
        metrics.DEAD_LETTERS.labels(letter.reason).inc()
        self._on_written(letter.record)

    def _schedule_retry(self, letter: _Letter, why: str) -> None:
        delay = min(_RETRY_MAX_SECONDS, _RETRY_INITIAL_SECONDS * 2 ** min(letter.attempts, 10))
        letter.next_try = self._clock() + delay
        self._retry.append(letter)
        if self.problem is None:
            msg = letter.record.message
            log.error(
                "cannot write to dead-letter topic %s: %s (holding commits, retrying)",
                self.topic,
                why,
                extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
            )
        self.problem = f"cannot write to dead-letter topic {self.topic}: {why}"

    def _on_error(self, err: KafkaError) -> None:
        log.warning("dead-letter producer: %s", err.str())  # throttled by connector.logs

    def poll(self) -> None:
        """Serve delivery reports and re-send letters whose retry time came."""
        self._producer.poll(0)
        if self._retry:
            now = self._clock()
            for _ in range(len(self._retry)):
                letter = self._retry.popleft()
                if letter.record.partition.closed:
                    self.pending -= 1  # handed over: the new owner dead-letters it again
                elif letter.next_try <= now:
                    self._produce(letter)
                else:
                    self._retry.append(letter)

    def flush(self, timeout: float) -> None:
        """Send letters waiting for a retry now, then wait up to ``timeout`` seconds for
        every outstanding delivery report (served on the calling thread)."""
        now = self._clock()
        for letter in self._retry:
            letter.next_try = min(letter.next_try, now)
        self.poll()
        self._producer.flush(timeout)
