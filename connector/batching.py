"""Grouping meter events into requests of at most 100, with a linger for partial batches.

A batch keeps, beside each event body, the ``PendingRecord`` it came from, so that a
Stripe answer (or a dead letter) can be credited to exactly the records it concerns.
A batch never mixes connected accounts: one request goes to one account with that
account's session, so each account (``PendingRecord.account``; None: the platform) fills
its own batch and lingers on its own.
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
    #: The connected account every event of the batch goes to; None: the platform.
    account: str | None = None

    def __len__(self) -> int:
        return len(self.events)

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, to isolate the events Stripe rejects."""
        middle = len(self.events) // 2
        return (
            Batch(self.events[:middle], self.records[:middle], account=self.account),
            Batch(self.events[middle:], self.records[middle:], account=self.account),
        )

    def drop_closed(self) -> Batch:
        """The same batch without events whose partition was handed over."""
        if not any(map(_partition_closed, self.records)):  # the common case, in C
            return self
        keep = [i for i, record in enumerate(self.records) if not record.partition.closed]
        return Batch(
            [self.events[i] for i in keep],
            [self.records[i] for i in keep],
            account=self.account,
        )


class Batcher:
    """Accumulates events per account; hands out full batches at once and partial ones
    after linger."""

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
        #: The partial batch of each account, and when its first event came.
        self._open: dict[str | None, Batch] = {}
        self._started: dict[str | None, float] = {}
        #: The account added to last, and its batch: the hot path of one account (or of
        #: consecutive records of one) skips the dictionary.
        self._current_account: str | None = None
        self._current = self._open[None] = Batch()
        self.ready: list[Batch] = []

    def add(self, events: Sequence[MeterEventBody], record: PendingRecord) -> None:
        """Add a record's events to its account's batch; full batches move to ``ready``."""
        account = record.account
        current = self._current if account == self._current_account else self._switch(account)
        for event in events:
            if not current.events:
                self._started[account] = self._clock()
            current.events.append(event)
            current.records.append(record)
            if len(current.events) >= self.max_events:
                self.ready.append(current)
                current = self._current = self._open[account] = Batch(account=account)

    def _switch(self, account: str | None) -> Batch:
        batch = self._open.get(account)
        if batch is None:
            batch = self._open[account] = Batch(account=account)
        self._current_account, self._current = account, batch
        return batch

    def due(self, *, force: bool = False) -> list[Batch]:
        """Take the ready batches, plus each partial one that lingered long enough."""
        now = self._clock()
        linger = self.linger_seconds
        for account, batch in list(self._open.items()):
            if batch.events and (force or now - self._started[account] >= linger):
                self.ready.append(batch)
                if account == self._current_account:
                    self._current = self._open[account] = Batch(account=account)
                else:  # an account not added to lately: forget it until it comes back
                    del self._open[account]
        ready, self.ready = self.ready, []
        return ready

    def seconds_until_due(self) -> float | None:
        """How long until the first partial batch is due; None when nothing is waiting."""
        if self.ready:
            return 0.0
        started = [self._started[a] for a, batch in self._open.items() if batch.events]
        if not started:
            return None
        return max(0.0, self.linger_seconds - (self._clock() - min(started)))

    @property
    def buffered_events(self) -> int:
        """Events waiting for a request."""
        return sum(len(batch) for batch in self._open.values()) + sum(
            len(batch) for batch in self.ready
        )
