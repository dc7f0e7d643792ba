"""Batches of at most max_events, partial batches after linger, splits for isolation."""

from __future__ import annotations

import pytest

from connector.batching import Batch, Batcher
from connector.offsets import PartitionOffsets


def _event(i: int) -> dict[str, object]:
    return {
        "event_name": "api_requests",
        "identifier": f"id-{i}",
        "timestamp": "2024-06-01T12:00:00.000Z",
        "payload": {"stripe_customer_id": "cus_1", "value": "1"},
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_full_batches_are_ready_at_once_and_never_exceed_max() -> None:
    state = PartitionOffsets("usage", 0)
    batcher = Batcher(100, 10.0, clock=FakeClock())
    for i in range(250):
        batcher.add([_event(i)], state.track(None, i))  # type: ignore[list-item]
    ready = batcher.due()
    assert [len(b) for b in ready] == [100, 100]
    assert batcher.buffered_events == 50
    assert batcher.due(force=True)[0].events[0]["identifier"] == "id-200"


def test_partial_batch_waits_for_linger() -> None:
    clock = FakeClock()
    state = PartitionOffsets("usage", 0)
    batcher = Batcher(100, 0.05, clock=clock)
    batcher.add([_event(1)], state.track(None, 1))  # type: ignore[list-item]
    assert batcher.due() == []
    assert batcher.seconds_until_due() == pytest.approx(0.05)
    clock.now = 0.06
    assert [len(b) for b in batcher.due()] == [1]
    assert batcher.seconds_until_due() is None


def test_fan_out_events_spill_into_next_batch() -> None:
    state = PartitionOffsets("usage", 0)
    batcher = Batcher(3, 1.0, clock=FakeClock())
    record = state.track(None, 0)
    batcher.add([_event(i) for i in range(5)], record)  # type: ignore[misc]
    ready = batcher.due(force=True)
    assert [len(b) for b in ready] == [3, 2]
    assert all(r is record for b in ready for r in b.records)


def test_max_events_above_stripe_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.\.100"):
        Batcher(101, 0.0)


def test_split_and_drop_closed() -> None:
    a, b = PartitionOffsets("usage", 0), PartitionOffsets("usage", 1)
    batch = Batch()
    for i in range(4):
        state = a if i % 2 else b
        batch.events.append(_event(i))  # type: ignore[arg-type]
        batch.records.append(state.track(None, i))
    left, right = batch.split()
    assert [e["identifier"] for e in left.events] == ["id-0", "id-1"]
    assert [e["identifier"] for e in right.events] == ["id-2", "id-3"]
    b.closed = True
    kept = batch.drop_closed()
    assert [e["identifier"] for e in kept.events] == ["id-1", "id-3"]
