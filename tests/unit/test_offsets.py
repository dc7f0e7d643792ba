"""The commit tracker: commits never pass an unresolved record, whatever the completion order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.deadline import Deadline
from connector.offsets import OffsetLedger, PartitionOffsets


def test_position_is_first_unresolved_offset() -> None:
    state = PartitionOffsets("usage", 0)
    records = [state.track(None, offset) for offset in (10, 11, 12)]
    assert state.position() == 10
    records[1].finish()
    assert state.position() == 10  # 11 is done, but 10 is not
    records[0].finish()
    assert state.position() == 12
    records[2].finish()
    assert state.position() == 13


def test_gaps_in_offsets_are_followed_in_consumption_order() -> None:
    state = PartitionOffsets("usage", 0)
    first = state.track(None, 5)
    second = state.track(None, 9)  # 6..8 compacted away
    first.finish()
    assert state.position() == 9
    second.finish()
    assert state.position() == 10


def test_to_commit_only_when_position_advanced() -> None:
    state = PartitionOffsets("usage", 3)
    assert state.to_commit() is None
    record = state.track(None, 0)
    assert state.to_commit() == 0  # nothing resolved yet: committing 0 is harmless but new
    state.committed = 0
    assert state.to_commit() is None
    record.finish()
    assert state.to_commit() == 1


def test_record_with_several_obligations_needs_all() -> None:
    state = PartitionOffsets("usage", 0)
    record = state.track(None, 0)
    record.remaining = 3  # fan-out into three events
    record.finish()
    record.finish()
    assert not record.resolved
    assert state.position() == 0
    record.finish()
    assert state.position() == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=5), min_size=1, max_size=60),
    st.data(),
)
def test_random_completion_orders_never_commit_past_unresolved(
    gaps: list[int], data: st.DataObject
) -> None:
    state = PartitionOffsets("usage", 0)
    offsets, offset = [], 0
    for gap in gaps:
        offset += gap
        offsets.append(offset)
    records = [state.track(None, o) for o in offsets]
    obligations = {o: data.draw(st.integers(1, 3)) for o in offsets}
    for record in records:
        record.remaining = obligations[record.offset]
    steps = [o for o in offsets for _ in range(obligations[o])]
    order = data.draw(st.permutations(steps))
    done: dict[int, int] = dict.fromkeys(offsets, 0)
    last_position = -1
    for step in order:
        next(r for r in records if r.offset == step).finish()
        done[step] += 1
        position = state.position()
        assert position is not None
        # Everything below the position is resolved ...
        assert all(done[o] == obligations[o] for o in offsets if o < position)
        # ... and the position is the first unresolved offset (or one past the last).
        unresolved = [o for o in offsets if done[o] < obligations[o]]
        assert position == (unresolved[0] if unresolved else offsets[-1] + 1)
        assert position >= last_position  # commits only move forward
        last_position = position


def test_the_ledger_holds_records_behind_an_unresolved_one() -> None:
    """Held, not unresolved, bounds memory: a resolved record behind a stuck one stays."""
    woken: list[int] = []
    ledger = OffsetLedger(on_resolved=lambda: woken.append(1))
    ledger.assign([("usage", 0), ("usage", 1)])
    first = ledger.partitions[("usage", 0)]
    stuck = first.track("m0", 0)
    later = [first.track(f"m{i}", i) for i in range(1, 5)]
    other = ledger.partitions[("usage", 1)].track("n0", 0)
    assert ledger.held == 6
    for record in later:
        ledger.finish(record)
    ledger.finish(other)
    assert ledger.held == 5, "four resolved records wait behind the stuck one"
    assert ledger.unresolved == 1
    assert len(woken) == 5
    ledger.finish(stuck)
    assert ledger.held == 0
    assert [(s.partition, pos) for s, pos in ledger.positions()] == [(0, 5), (1, 1)]


def test_an_accepted_batch_finishes_each_event_and_wakes_the_loop_once() -> None:
    """finish_each is finish per event (a fan-out record appears once per event)."""
    woken: list[int] = []
    ledger = OffsetLedger(on_resolved=lambda: woken.append(1))
    ledger.assign([("usage", 0)])
    state = ledger.partitions[("usage", 0)]
    single, fanned, waiting = (state.track(f"m{i}", i) for i in range(3))
    fanned.remaining = 2
    waiting.remaining = 2
    ledger.finish_each([single, fanned, waiting])
    assert (single.remaining, fanned.remaining, waiting.remaining) == (0, 1, 1)
    assert woken == [1], "one record became resolved: one wake-up"
    ledger.finish_each([fanned, waiting, waiting])
    assert [r.remaining for r in (fanned, waiting)] == [0, -1]
    assert woken == [1, 1]
    assert [(s.partition, pos) for s, pos in ledger.positions()] == [(0, 3)]
    ledger.finish_each([])
    assert woken == [1, 1], "nothing resolved: no wake-up"


def test_the_ledger_forgets_a_closed_partition_and_its_late_answers() -> None:
    woken: list[int] = []
    ledger = OffsetLedger(on_resolved=lambda: woken.append(1))
    ledger.assign([("usage", 0)])
    state = ledger.partitions[("usage", 0)]
    records = [state.track(None, i) for i in range(3)]
    ledger.finish(records[0])
    assert ledger.close(state) == 2, "two records were unresolved when it was handed over"
    assert len(ledger) == 0
    assert ledger.get("usage", 0) is None
    ledger.finish(records[1])  # a late answer for the old assignment
    assert len(woken) == 1, "late answers do not wake the loop"
    ledger.assign([("usage", 0)])  # it comes back: a fresh state
    assert ledger.partitions[("usage", 0)] is not state
    assert ledger.held == 0


def test_commit_positions_advance_and_a_refused_commit_is_sent_again() -> None:
    ledger = OffsetLedger()
    ledger.assign([("usage", 2)])
    state = ledger.partitions[("usage", 2)]
    ledger.finish(state.track(None, 7))
    [(_, position)] = ledger.positions()
    assert position == 8
    ledger.committed(("usage", 2), position)
    assert ledger.positions() == []
    ledger.commit_failed(("usage", 2))
    assert [pos for _s, pos in ledger.positions()] == [8]
    ledger.committed(("usage", 9), 1)  # not assigned here: ignored
    ledger.commit_failed(("usage", 9))


def test_a_deadline_counts_down_and_stays_at_zero() -> None:
    now = [100.0]
    deadline = Deadline.after(5, clock=lambda: now[0])
    assert deadline.remaining() == 5
    assert not deadline.passed
    now[0] = 104.5
    assert deadline.remaining() == 0.5
    now[0] = 200.0
    assert deadline.remaining() == 0.0
    assert deadline.passed


def test_a_record_refused_for_several_events_owes_a_letter_for_each() -> None:
    ledger = OffsetLedger()
    ledger.assign([("usage", 0)])
    record = ledger.partitions[("usage", 0)].track(None, 0)
    record.remaining = 2  # two fan-out events in flight
    letters: list[str] = []
    ledger.refuse(record, lambda: letters.append("gpu_seconds"))
    ledger.refuse(record, lambda: letters.append("cpu_seconds"))
    assert letters == ["gpu_seconds", "cpu_seconds"], "one letter per refused event"
    assert record.remaining == 2, "both events answered; both letters still owed"
    ledger.finish(record)  # the first letter confirmed
    assert ledger.held == 1
    ledger.finish(record)  # the second
    assert ledger.held == 0
