"""What Stripe says after the 200: error reports for events it dropped, as v2 thin events.

The stream answers 200 ``{}`` for a well-formed request; each event is then validated
against its meter (and the customer list). An event that fails is dropped: it is never
billed, and it surfaces only here, grouped per meter per validation window, as
``v1.billing.meter.error_report_triggered`` (related object: the meter) or, for event
names without a meter, ``v1.billing.meter.no_meter_found`` (no related object). The
emulator decides each event's fate on receipt, but a report becomes visible only once
its validation window has closed (``validation_delay_seconds`` after the window opened),
so the 200 never tells a client which events were dropped, as with Stripe.

Not thread-safe on its own: ``EmulatorState`` calls it under its lock.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meterstream_local.emulator.clock import rfc3339

ERROR_REPORT_TYPE = "v1.billing.meter.error_report_triggered"
NO_METER_TYPE = "v1.billing.meter.no_meter_found"
EVENT_TYPES = (ERROR_REPORT_TYPE, NO_METER_TYPE)
#: Stripe lists v2 events going back 30 days.
RETENTION_SECONDS = 30 * 86_400.0
#: Each error type in a report carries a few sample errors, not every dropped event.
MAX_SAMPLE_ERRORS = 10

#: One dropped event as validation reports it:
#: (index in the request, code, param, message, event_name, identifier or None).
DroppedEvent = tuple[int, str, str, str, str, str | None]


@dataclass(frozen=True)
class Drop:
    """A dropped event waiting for its validation window to close."""

    window_start: float
    window_end: float
    meter_id: str | None  # None: no meter for the event name
    code: str
    message: str
    identifier: str


@dataclass(frozen=True)
class ThinEvent:
    """One ``v2.core.event`` (its creation time kept in epoch milliseconds, as shown, for
    filtering)."""

    created_ms: int
    sequence: int
    body: dict[str, Any]

    @property
    def id(self) -> str:
        """The event id (``evt_...``)."""
        return str(self.body["id"])

    @property
    def type(self) -> str:
        """The event type."""
        return str(self.body["type"])

    @property
    def object_id(self) -> str | None:
        """The related object's id, if any."""
        related = self.body.get("related_object")
        return str(related["id"]) if related else None


class ErrorReports:
    """Dropped events of one account: pending ones, and the thin events they became."""

    def __init__(self, context: str | None = None) -> None:
        #: The connected account these reports belong to (None: the platform account).
        self.context = context
        self.pending: list[Drop] = []
        self.events: list[ThinEvent] = []
        self.by_id: dict[str, ThinEvent] = {}
        #: Dropped events by code, counted once their window closed (reported).
        self.dropped_by_code: dict[str, int] = {}
        self._sequence = itertools.count(1)
        self._id_prefix = secrets.token_hex(4)

    def add(
        self,
        dropped: Iterable[DroppedEvent],
        meter_ids: Mapping[str, str | None],
        *,
        now: float,
        delay: float,
    ) -> None:
        """Queue dropped events received at ``now``; their window closes within ``delay``."""
        if delay > 0:
            start = (now // delay) * delay
            end = start + delay
        else:
            start = end = now
        for _, code, _, message, name, identifier in dropped:
            self.pending.append(
                Drop(
                    window_start=start,
                    window_end=end,
                    meter_id=None if code == "no_meter" else meter_ids.get(name),
                    code=code,
                    message=message,
                    identifier=identifier or f"emulator_generated_{secrets.token_hex(8)}",
                )
            )

    def flush(self, now: float) -> None:
        """Turn every pending drop whose window has closed by ``now`` into thin events."""
        if not self.pending:
            return
        due = [drop for drop in self.pending if drop.window_end <= now]
        if not due:
            return
        self.pending = [drop for drop in self.pending if drop.window_end > now]
        groups: dict[tuple[float, float, str | None], list[Drop]] = {}
        for drop in due:
            groups.setdefault((drop.window_start, drop.window_end, drop.meter_id), []).append(drop)
        for (start, end, meter_id), drops in sorted(
            groups.items(), key=lambda item: (item[0][1], item[0][2] or "")
        ):
            self._report(start, end, meter_id, drops)

    def _report(self, start: float, end: float, meter_id: str | None, drops: list[Drop]) -> None:
        by_code: dict[str, list[Drop]] = {}
        for drop in drops:
            by_code.setdefault(drop.code, []).append(drop)
            self.dropped_by_code[drop.code] = self.dropped_by_code.get(drop.code, 0) + 1
        error_types = [
            {
                "code": code,
                "error_count": len(items),
                "sample_errors": [
                    {"error_message": d.message, "request": {"identifier": d.identifier}}
                    for d in items[:MAX_SAMPLE_ERRORS]
                ],
            }
            for code, items in sorted(by_code.items())
        ]
        counts = ", ".join(f"{t['code']} ({t['error_count']})" for t in error_types)
        where = f"meter {meter_id}" if meter_id else "event names with no meter"
        sequence = next(self._sequence)
        body: dict[str, Any] = {
            "id": f"evt_test_{self._id_prefix}{sequence:012x}",
            "object": "v2.core.event",
            "type": ERROR_REPORT_TYPE if meter_id else NO_METER_TYPE,
            "created": rfc3339(end),
            "livemode": False,
            "context": self.context,
            "reason": None,
            "related_object": (
                {"id": meter_id, "type": "billing.meter", "url": f"/v1/billing/meters/{meter_id}"}
                if meter_id
                else None
            ),
            "data": {
                "developer_message_summary": (
                    f"{len(drops)} meter event(s) for {where} were dropped during validation: "
                    f"{counts}"
                ),
                "validation_start": rfc3339(start),
                "validation_end": rfc3339(end),
                "reason": {"error_count": len(drops), "error_types": error_types},
            },
        }
        event = ThinEvent(created_ms=int(end * 1000), sequence=sequence, body=body)
        self.events.append(event)
        self.by_id[event.id] = event

    def select(
        self,
        now: float,
        *,
        types: Iterable[str] = (),
        object_id: str | None = None,
        gt: float | None = None,
        gte: float | None = None,
        lt: float | None = None,
        lte: float | None = None,
    ) -> list[ThinEvent]:
        """The reported events matching the filters (epoch seconds), newest first (30 days
        kept)."""
        wanted = set(types)
        oldest = _ms(now - RETENTION_SECONDS)
        low = max(oldest, _ms(gte) if gte is not None else oldest)
        if gt is not None:
            low = max(low, _ms(gt) + 1)
        high = _ms(lte) if lte is not None else None
        if lt is not None:
            high = min(high, _ms(lt) - 1) if high is not None else _ms(lt) - 1
        chosen = [
            e
            for e in self.events
            if e.created_ms >= low
            and (high is None or e.created_ms <= high)
            and (not wanted or e.type in wanted)
            and (object_id is None or e.object_id == object_id)
        ]
        chosen.sort(key=lambda e: (e.created_ms, e.sequence), reverse=True)
        return chosen


def _ms(epoch: float) -> int:
    """Whole epoch milliseconds (the precision of v2 timestamps)."""
    return round(epoch * 1000)
