"""The commit tracker: commits never pass an unresolved record, whatever the completion order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.offsets import PartitionOffsets


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
