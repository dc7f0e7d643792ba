"""The meter checks on the hot path: send, refuse, or hold a record until the list is fresh.

With ``meters.preflight`` on, every event is checked against the cached meters list
(``meters.MeterCatalog``) before it is batched (docs/architecture.md, "Meters"). A record
whose event name the list does not know is held while the list is read again early; the
records held are released (to be sent, or refused) when that read ends. A read that fails
(Stripe unreachable) keeps them held and is tried again with backoff: an outage, never a
reason to dead-letter.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from connector.config import MappingConfig
from connector.errors import DeadLetterReason
from connector.mapping import MeterEventBody
from connector.meters import MeterCatalog
from connector.offsets import PendingRecord

log = logging.getLogger("meterstream.meters")

#: Backoff between meter list attempts while Stripe cannot list them.
RETRY_INITIAL_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0

Refuse = Callable[[PendingRecord, DeadLetterReason, str], None]
Held = tuple[PendingRecord, list[MeterEventBody]]


class MeterGate:
    """Decides per record whether its events may go to Stripe; holds the undecided ones."""

    def __init__(
        self,
        catalog: MeterCatalog,
        mapping: MappingConfig,
        *,
        refuse: Refuse,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog
        self.enabled = catalog.enabled
        self._refuse = refuse
        self._clock = clock
        default = (mapping.customer_payload_key, mapping.value_payload_key)
        #: (customer key, value key) per fan-out event name; the mapping's own otherwise.
        self._keys = {
            meter.event_name: (
                meter.customer_payload_key or default[0],
                meter.value_payload_key or default[1],
            )
            for meter in mapping.fan_out
        }
        self._default = default
        self._held: list[Held] = []
        self._task: asyncio.Task[bool] | None = None
        self._retry_at = 0.0
        self._failures = 0

    @property
    def holding(self) -> bool:
        """Whether records wait for a fresh list (aggregation starts no block meanwhile)."""
        return bool(self._held)

    def take(self, record: PendingRecord, events: list[MeterEventBody]) -> bool:
        """Whether ``events`` may be sent now; otherwise the record is refused or held."""
        check = self.catalog.check
        for event in events:
            name = event["event_name"]
            problem = check(name, *self._keys.get(name, self._default))
            if problem is None:
                continue
            if self.catalog.wants_refresh:
                # Unknown to a list that may be stale: decide once it has been read again.
                self._held.append((record, events))
            else:
                self._refuse(record, problem.reason, problem.message)
            return False
        return True

    def turn(self) -> list[Held]:
        """Start a due read of the list; when one ended, the held records now to be sent."""
        released: list[Held] = []
        task = self._task
        if task is not None and task.done():
            self._task = None
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                log.error("listing billing meters failed unexpectedly", exc_info=failure)
            ok = not task.cancelled() and failure is None and task.result()
            self._failures = 0 if ok else self._failures + 1
            delay = min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2 ** max(0, self._failures - 1))
            self._retry_at = self._clock() + (0.0 if ok else delay)
            held, self._held = self._held, []
            released = [
                (record, events)
                for record, events in held
                if not record.partition.closed and self.take(record, events)
            ]
        if self._task is None and self.catalog.wants_refresh and self._clock() >= self._retry_at:
            self._task = asyncio.create_task(self.catalog.refresh())
        return released

    async def close(self) -> None:
        """Stop a read in progress (shutdown)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
