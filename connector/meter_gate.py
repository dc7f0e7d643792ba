"""The meter checks on the hot path: send, refuse, or hold a record until the list is fresh.

With ``meters.preflight`` on, every event is checked against the cached meters list
(``meters.MeterCatalog``) before it is batched (docs/architecture.md, "Meters"). A record
whose event name the list does not know is held while the list is read again early; the
records held are released (to be sent, or refused) when that read ends. A read that fails
(Stripe unreachable) keeps them held and is tried again with backoff: an outage, never a
reason to dead-letter.

With ``mapping.stripe_account`` the meters live on each connected account: every account
has its own catalog (listed with ``Stripe-Context`` when its first record comes, then
refreshed like the platform's), its own held records and its own listing in progress, so
a slow or failing listing of one account holds only that account's records.
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
#: Makes the (not yet listed) catalog of a connected account.
CatalogFor = Callable[[str], MeterCatalog]
Held = tuple[PendingRecord, list[MeterEventBody]]


class _AccountGate:
    """One account's catalog, the records held for its next listing, and that listing."""

    def __init__(self, catalog: MeterCatalog) -> None:
        self.catalog = catalog
        self.held: list[Held] = []
        self.task: asyncio.Task[bool] | None = None
        self.retry_at = 0.0
        self.failures = 0


class MeterGate:
    """Decides per record whether its events may go to Stripe; holds the undecided ones."""

    def __init__(
        self,
        catalog: MeterCatalog,
        mapping: MappingConfig,
        *,
        refuse: Refuse,
        catalog_for: CatalogFor | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: The platform's catalog (records without a connected account).
        self.catalog = catalog
        self.enabled = catalog.enabled
        self._refuse = refuse
        self._catalog_for = catalog_for
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
        self._gates: dict[str | None, _AccountGate] = {None: _AccountGate(catalog)}

    def _gate(self, account: str | None) -> _AccountGate:
        gate = self._gates.get(account)
        if gate is None:
            if account is None or self._catalog_for is None:
                raise RuntimeError(f"no meters catalog for account {account!r}")
            gate = self._gates[account] = _AccountGate(self._catalog_for(account))
        return gate

    def catalog_of(self, account: str | None) -> MeterCatalog:
        """The catalog that decides ``account``'s events (made on first use)."""
        return self._gate(account).catalog

    @property
    def problem(self) -> str | None:
        """Why a meters listing fails now (the platform's or an account's), or None."""
        for account, gate in self._gates.items():
            if gate.catalog.problem:
                where = f"connected account {account}: " if account else ""
                return where + gate.catalog.problem
        return None

    @property
    def holding(self) -> bool:
        """Whether records wait for a fresh list (aggregation starts no block meanwhile)."""
        return any(gate.held for gate in self._gates.values())

    def take(self, record: PendingRecord, events: list[MeterEventBody]) -> bool:
        """Whether ``events`` may be sent now; otherwise the record is refused or held."""
        gate = self._gates.get(record.account) or self._gate(record.account)
        catalog = gate.catalog
        sendable = catalog.sendable
        for event in events:
            name = event["event_name"]
            customer_key, value_key = self._keys.get(name, self._default)
            if (name, customer_key, value_key) in sendable:  # the common case: no call
                continue
            problem = catalog.check(name, customer_key, value_key)
            if problem is None:
                continue
            if catalog.wants_refresh:
                # Unknown to a list that may be stale: decide once it has been read again.
                gate.held.append((record, events))
            else:
                self._refuse(record, problem.reason, problem.message)
            return False
        return True

    def turn(self) -> list[Held]:
        """Start due reads of the lists; for each that ended, the held records now to be sent."""
        released: list[Held] = []
        for gate in self._gates.values():
            released.extend(self._turn(gate))
        return released

    def _turn(self, gate: _AccountGate) -> list[Held]:
        released: list[Held] = []
        task = gate.task
        if task is not None and task.done():
            gate.task = None
            failure = None if task.cancelled() else task.exception()
            if failure is not None:
                log.error("listing billing meters failed unexpectedly", exc_info=failure)
            ok = not task.cancelled() and failure is None and task.result()
            gate.failures = 0 if ok else gate.failures + 1
            delay = min(RETRY_MAX_SECONDS, RETRY_INITIAL_SECONDS * 2 ** max(0, gate.failures - 1))
            gate.retry_at = self._clock() + (0.0 if ok else delay)
            held, gate.held = gate.held, []
            refused = gate.catalog.refused
            if refused is not None:
                # The account itself is refused (deleted, say): its records cannot be billed.
                for record, _events in held:
                    if not record.partition.closed:
                        self._refuse(record, "rejected_by_stripe", str(refused))
                held = []
            released = [
                (record, events)
                for record, events in held
                if not record.partition.closed and self.take(record, events)
            ]
        if gate.task is None and gate.catalog.wants_refresh and self._clock() >= gate.retry_at:
            gate.task = asyncio.create_task(gate.catalog.refresh())
        return released

    async def close(self) -> None:
        """Stop reads in progress (shutdown)."""
        tasks = [gate.task for gate in self._gates.values() if gate.task is not None]
        for gate in self._gates.values():
            gate.task = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
