"""The meter gate: send what a meter takes, refuse what none does, hold the unknown until
the list has been read again (and keep holding while Stripe cannot be reached)."""

from __future__ import annotations

import asyncio

from connector.config import MappingConfig
from connector.errors import BackoffError
from connector.mapping import MeterEventBody
from connector.meter_gate import MeterGate
from connector.meters import Meter, MeterCatalog
from connector.offsets import PartitionOffsets, PendingRecord


def _meter(name: str, *, status: str = "active", customer_key: str = "stripe_customer_id") -> Meter:
    return Meter(f"mtr_{name}", name, status, "sum", customer_key, "value")


def _event(name: str) -> MeterEventBody:
    return {
        "event_name": name,
        "identifier": f"id-{name}",
        "timestamp": "2026-12-01T00:00:00.000Z",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
    }


class World:
    def __init__(self, listed: list[list[Meter] | Exception]) -> None:
        self.listed = listed
        self.now = [0.0]
        self.refused: list[tuple[int, str]] = []

        async def fetch() -> list[Meter]:
            answer = self.listed.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        first = listed.pop(0)
        assert isinstance(first, list)
        self.catalog = MeterCatalog(
            first, fetch=fetch, refresh_seconds=60, clock=lambda: self.now[0]
        )
        self.gate = MeterGate(
            self.catalog,
            MappingConfig(fan_out=[]),
            refuse=lambda record, reason, _msg: self.refused.append((record.offset, reason)),
            clock=lambda: self.now[0],
        )
        self.state = PartitionOffsets("usage", 0)

    def record(self, offset: int) -> PendingRecord:
        return self.state.track(None, offset)

    def turns(self, count: int = 3) -> list[int]:
        """Run the gate's turns on a loop; the offsets it released."""

        async def run() -> list[int]:
            released: list[int] = []
            for _ in range(count):
                released += [record.offset for record, _events in self.gate.turn()]
                await asyncio.sleep(0)
            return released

        return asyncio.run(run())


def test_known_names_pass_mismatched_keys_are_refused_at_once() -> None:
    world = World([[_meter("api_requests"), _meter("gpu", customer_key="cust_key")]])
    assert world.gate.take(world.record(0), [_event("api_requests")])
    assert not world.gate.take(world.record(1), [_event("gpu")])
    assert world.refused == [(1, "meter_payload_mismatch")]


def test_an_unknown_name_is_held_until_the_list_is_read_again() -> None:
    world = World([[_meter("api_requests")], [_meter("api_requests"), _meter("tokens")]])
    assert not world.gate.take(world.record(0), [_event("tokens")])
    assert not world.gate.take(world.record(1), [_event("nowhere")])
    assert world.refused == [], "held, not refused: the list may be stale"
    assert world.turns() == [0]  # the fresh list has a meter for tokens
    assert world.refused == [(1, "no_active_meter")]


def test_while_stripe_cannot_list_meters_the_records_stay_held() -> None:
    outage = BackoffError("503", cause="server_error")
    world = World([[_meter("api_requests")], outage, [_meter("api_requests"), _meter("tokens")]])
    assert not world.gate.take(world.record(0), [_event("tokens")])
    assert world.turns() == []
    assert world.refused == [], "an outage is never a reason to dead-letter"
    assert world.catalog.problem is not None
    assert world.turns() == [], "no new read before the backoff"
    world.now[0] += 5
    assert world.turns() == [0]
    assert world.refused == []


def test_a_name_once_sendable_is_judged_again_when_the_list_changes() -> None:
    """The gate remembers what passed (its hot path makes no call for it) only as long as
    the list it was judged against: a meter deactivated since is refused."""
    inactive = [_meter("api_requests", status="inactive")]
    world = World([[_meter("api_requests")], inactive, inactive])
    assert world.gate.take(world.record(0), [_event("api_requests")])
    assert world.gate.take(world.record(1), [_event("api_requests")])
    world.now[0] += 61  # the list is due: read again, and the meter is now inactive
    assert world.turns() == []
    assert not world.gate.take(world.record(2), [_event("api_requests")])
    assert world.turns() == [], "held for one more read (early), then refused"
    assert world.refused == [(2, "no_active_meter")]
