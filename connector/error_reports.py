"""Stripe's asynchronous error reports: what it dropped after answering ``200 {}``, heard.

Stripe validates meter events after accepting them, and reports what it dropped as thin
events on ``GET /v2/core/events`` (docs/stripe.md, "Error reports"):
``v1.billing.meter.error_report_triggered`` (per meter) and
``v1.billing.meter.no_meter_found``. One member of the consumer group at a time polls
them, the one that owns partition 0 of the first topic (the group's own election, moving
with rebalances); each new report is counted in
``meterstream_stripe_error_reports_total{code}``, logged as a WARNING that names the meter,
the event name, the codes and counts, the validation window and a few sample messages,
and, when ``kafka.error_reports_topic`` is set, written there as one JSON record keyed by
the Stripe event id.

No report is counted or written twice: the cursor (the newest report's ``created`` and the
ids seen at that instant) is rebuilt from the reports topic when a member takes over;
without a topic, polling starts at the process's start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import SecretStr

from connector import kafka, metrics
from connector.config import MeterstreamConfig
from connector.errors import StripeError
from connector.stripe_v1 import StripeV1Client

log = logging.getLogger("meterstream.error_reports")

EVENTS_PATH = "/v2/core/events"
REPORT_TYPES = ("v1.billing.meter.error_report_triggered", "v1.billing.meter.no_meter_found")
#: Sample messages shown per report in the log line.
SAMPLES_LOGGED = 3
#: Reports read back from the topic's tail to rebuild the cursor (per partition).
CURSOR_TAIL = 200
#: Bound of the broker calls made to rebuild the cursor and to write a report.
KAFKA_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class ErrorType:
    """One error code of a report: how many events, and a few samples."""

    code: str
    count: int
    samples: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """One thin event of Stripe's, read as what meterstream needs of it."""

    id: str
    type: str
    created: str
    meter_id: str | None
    summary: str
    validation_start: str | None
    validation_end: str | None
    errors: tuple[ErrorType, ...]

    @property
    def error_count(self) -> int:
        return sum(error.count for error in self.errors)

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ErrorReport:
        """From a ``v2.core.event`` (its ``data`` included); tolerant of missing parts.

        Codes are an open list: whatever Stripe sends is passed through as it comes.
        """
        raw_data = event.get("data")
        data: Mapping[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        raw_reason = data.get("reason")
        reason: Mapping[str, Any] = raw_reason if isinstance(raw_reason, dict) else {}
        related = event.get("related_object")
        meter_id = related.get("id") if isinstance(related, dict) else None
        errors = []
        for item in reason.get("error_types") or []:
            if not isinstance(item, dict):
                continue
            samples = [s for s in item.get("sample_errors") or [] if isinstance(s, dict)]
            errors.append(
                ErrorType(
                    code=str(item.get("code") or "unknown"),
                    count=_count(item.get("error_count")),
                    samples=tuple(str(s.get("error_message", "")) for s in samples),
                    identifiers=tuple(i for s in samples if (i := _identifier(s))),
                )
            )
        if not errors:  # no breakdown: the total under the event's own type
            total = _count(reason.get("error_count"))
            errors.append(ErrorType(code=str(event.get("type")), count=total))
        return cls(
            id=str(event.get("id")),
            type=str(event.get("type")),
            created=str(event.get("created")),
            meter_id=str(meter_id) if meter_id else None,
            summary=str(data.get("developer_message_summary") or ""),
            validation_start=_text(data.get("validation_start")),
            validation_end=_text(data.get("validation_end")),
            errors=tuple(errors),
        )

    def to_record(self, event_name: str | None) -> bytes:
        """The JSON written to ``kafka.error_reports_topic``."""
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "created": self.created,
                "meter": self.meter_id,
                "event_name": event_name,
                "summary": self.summary,
                "validation_start": self.validation_start,
                "validation_end": self.validation_end,
                "error_count": self.error_count,
                "errors": [
                    {
                        "code": e.code,
                        "count": e.count,
                        "samples": list(e.samples),
                        "identifiers": list(e.identifiers),
                    }
                    for e in self.errors
                ],
            }
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _identifier(sample: Mapping[str, Any]) -> str | None:
    # Stripe's examples show request.identifier and request.{id, idempotency_key}.
    request = sample.get("request")
    if not isinstance(request, dict):
        return None
    value = request.get("identifier") or request.get("idempotency_key") or request.get("id")
    return str(value) if value else None


@dataclass(slots=True)
class Cursor:
    """Where polling resumes: the newest ``created`` handled and the ids handled at it."""

    created: str
    ids: set[str] = field(default_factory=set)

    def admits(self, report: ErrorReport) -> bool:
        """Whether ``report`` is new (not before the cursor, not already handled)."""
        if _instant(report.created) < _instant(self.created):
            return False
        return report.id not in self.ids

    def advance(self, report: ErrorReport) -> None:
        if _instant(report.created) > _instant(self.created):
            self.created = report.created
            self.ids = set()
        self.ids.add(report.id)


def _instant(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def now_iso() -> str:
    """Now, as Stripe writes v2 times."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ErrorReportPoller:
    """Polls the error reports while this process holds the group's election."""

    def __init__(
        self,
        config: MeterstreamConfig,
        api_key: SecretStr,
        *,
        event_names: Callable[[str], str | None] = lambda _meter_id: None,
    ) -> None:
        self._config = config
        self._api_key = api_key
        self._event_name = event_names
        self._topic = config.kafka.error_reports_topic
        self._producer: Any = None
        self.cursor: Cursor | None = None

    async def run(self) -> None:
        """Poll every ``stripe.error_reports_poll_seconds`` until cancelled."""
        interval = self._config.stripe.error_reports_poll_seconds
        try:
            self.cursor = await asyncio.to_thread(self._load_cursor)
            log.info("polling Stripe's meter error reports from %s", self.cursor.created)
            while True:
                try:
                    await self.poll()
                except StripeError as exc:  # an outage: the next round tries again
                    log.warning("cannot read Stripe's meter error reports: %s", exc)
                await asyncio.sleep(interval)
        finally:
            if self._producer is not None:
                await asyncio.to_thread(self._producer.flush, KAFKA_TIMEOUT_SECONDS)

    async def poll(self) -> int:
        """One round: every new report handled in ``created`` order; how many were new."""
        assert self.cursor is not None
        reports: list[ErrorReport] = []
        async with StripeV1Client(self._config.stripe, self._api_key) as client:
            params: dict[str, Any] = {
                "types": list(REPORT_TYPES),
                "created[gte]": self.cursor.created,
                "limit": 100,
            }
            path = EVENTS_PATH
            doing = "listing meter error reports"
            while True:
                page = await client.get(path, params, doing)
                for listed in page.get("data") or []:
                    if not isinstance(listed, dict):
                        continue
                    event = listed
                    if not isinstance(listed.get("data"), dict):  # a thin event: fetch it
                        event = await client.get(f"{EVENTS_PATH}/{listed.get('id')}", {}, doing)
                    reports.append(ErrorReport.from_event(event))
                following = page.get("next_page_url")
                if not following:
                    break
                path, params = str(following), {}
        reports.sort(key=lambda report: (_instant(report.created), report.id))
        fresh = [report for report in reports if self.cursor.admits(report)]
        for report in fresh:
            await self._handle(report)
            self.cursor.advance(report)
        return len(fresh)

    async def _handle(self, report: ErrorReport) -> None:
        event_name = self._event_name(report.meter_id) if report.meter_id else None
        if self._topic is not None:
            await asyncio.to_thread(self._write, report, event_name)
        for error in report.errors:
            metrics.STRIPE_ERROR_REPORTS.labels(error.code).inc(error.count)
        codes = ", ".join(f"{e.code} x{e.count}" for e in report.errors)
        samples = [s for e in report.errors for s in e.samples][:SAMPLES_LOGGED]
        log.warning(
            "Stripe dropped %d meter events after accepting them: meter %s, event name %s, "
            "%s, validated %s .. %s%s",
            report.error_count,
            report.meter_id or "(none)",
            event_name or "(unknown)",
            codes,
            report.validation_start or "?",
            report.validation_end or "?",
            f"; e.g. {' | '.join(samples)}" if samples else "",
        )

    # -- the reports topic (poll thread of asyncio.to_thread) ---------------------------

    def _write(self, report: ErrorReport, event_name: str | None) -> None:
        assert self._topic is not None
        if self._producer is None:
            self._producer = Producer(kafka.producer_properties(self._config.kafka))
        failed: list[str] = []
        self._producer.produce(
            self._topic,
            key=report.id.encode(),
            value=report.to_record(event_name),
            on_delivery=lambda err, _msg: failed.append(str(err)) if err else None,
        )
        if self._producer.flush(KAFKA_TIMEOUT_SECONDS) or failed:
            # Not counted and the cursor not moved: the next round writes it again.
            raise StripeReportNotKeptError(
                f"cannot write error report {report.id} to {self._topic}: {failed or 'timeout'}"
            )

    def _load_cursor(self) -> Cursor:
        """The cursor from the reports topic's tail, or now when there is no topic."""
        if self._topic is None:
            return Cursor(now_iso())
        reader = Consumer(
            {
                **kafka.offsets_reader_properties(self._config.kafka),
                "group.id": f"{self._config.kafka.group_id}.error-reports",
                "enable.partition.eof": True,
            }
        )
        try:
            metadata = reader.list_topics(self._topic, timeout=KAFKA_TIMEOUT_SECONDS)
            described = metadata.topics.get(self._topic)
            if described is None or described.error is not None:
                raise StripeReportNotKeptError(
                    f"kafka.error_reports_topic {self._topic!r} cannot be read: "
                    f"{getattr(described, 'error', 'missing')}"
                )
            cursor: Cursor | None = None
            for partition in described.partitions:
                low, high = reader.get_watermark_offsets(
                    TopicPartition(self._topic, partition), timeout=KAFKA_TIMEOUT_SECONDS
                )
                if high <= low:
                    continue
                reader.assign(
                    [TopicPartition(self._topic, partition, max(low, high - CURSOR_TAIL))]
                )
                seen = 0
                while seen < high - max(low, high - CURSOR_TAIL):
                    msg = reader.poll(KAFKA_TIMEOUT_SECONDS)
                    if msg is None:
                        break
                    if msg.error() is not None:
                        break
                    seen += 1
                    body = orjson.loads(msg.value() or b"{}")
                    if "id" not in body or "created" not in body:
                        continue
                    report = ErrorReport(
                        id=str(body["id"]),
                        type=str(body.get("type")),
                        created=str(body["created"]),
                        meter_id=None,
                        summary="",
                        validation_start=None,
                        validation_end=None,
                        errors=(),
                    )
                    if cursor is None:
                        cursor = Cursor(report.created)
                    cursor.advance(report)
            return cursor or Cursor(now_iso())
        finally:
            reader.close()


class StripeReportNotKeptError(StripeError):
    """A report could not be kept in ``kafka.error_reports_topic``: handled again later."""
