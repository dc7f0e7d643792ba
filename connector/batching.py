"""Grouping meter events into requests of at most 100, with a linger for partial batches.

A batch keeps, beside each event body, the ``PendingRecord`` it came from, so that a
Stripe answer (or a dead letter) can be credited to exactly the records it concerns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from connector.config import STRIPE_MAX_EVENTS_PER_REQUEST
from connector.mapping import MeterEventBody
from connector.offsets import PendingRecord

_partition_closed = attrgetter("partition.closed")


@dataclass(slots=True)
class Batch:
    """Events for one request and, index for index, the records they came from."""

    events: list[MeterEventBody] = field(default_factory=list)
    records: list[PendingRecord] = field(default_factory=list)
    #: How many times this batch was sent after a session expiry (DESIGN 3.3).
    expired_resends: int = 0

    def __len__(self) -> int:
        return len(self.events)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, to isolate the events Stripe rejects."""
        middle = len(self.events) // 2
        return (
            Batch(self.events[:middle], self.records[:middle]),
            Batch(self.events[middle:], self.records[middle:]),
        )

    def drop_closed(self) -> Batch:
        """The same batch without events whose partition was handed over."""
        if not any(map(_partition_closed, self.records)):  # the common case, in C
            return self
        keep = [i for i, record in enumerate(self.records) if not record.partition.closed]
        return Batch([self.events[i] for i in keep], [self.records[i] for i in keep])


class Batcher:
    """Accumulates events; hands out full batches at once and partial ones after linger."""

    def __init__(
        self,
        max_events: int,
        linger_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_events <= STRIPE_MAX_EVENTS_PER_REQUEST:
            raise ValueError(f"max_events must be within 1..{STRIPE_MAX_EVENTS_PER_REQUEST}")
        self.max_events = max_events
        self.linger_seconds = linger_seconds
        self._clock = clock
        self._current = Batch()
        self._started = 0.0
        self.ready: list[Batch] = []

    def add(self, events: Sequence[MeterEventBody], record: PendingRecord) -> None:
        """Add a record's events; full batches move to ``ready``."""
        current = self._current
        for event in events:
            if not current.events:
                self._started = self._clock()
            current.events.append(event)
            current.records.append(record)
            if len(current.events) >= self.max_events:
                self.ready.append(current)
                current = self._current = Batch()

    def due(self, *, force: bool = False) -> list[Batch]:
        """Take the ready batches, plus the partial one if it lingered long enough."""
        current = self._current
        if current.events and (force or self._clock() - self._started >= self.linger_seconds):
            self.ready.append(current)
            self._current = Batch()
        ready, self.ready = self.ready, []
        return ready

    def seconds_until_due(self) -> float | None:
        """How long until the partial batch is due; None when nothing is waiting."""
        if self.ready:
            return 0.0
        if not self._current.events:
            return None
        return max(0.0, self.linger_seconds - (self._clock() - self._started))

    @property
    def buffered_events(self) -> int:
        """Events waiting for a request."""
        return len(self._current.events) + sum(len(batch) for batch in self.ready)
