"""The dedupe log's bookkeeping, driven directly (pure logic: no clock, no HTTP).

Pruning and compaction move slots around; a wrong offset would make an old identifier
look new, a new one look old, or a cancel hit the wrong event. These check all three
past a compaction.
"""

from __future__ import annotations

from meterstream_local.emulator import EmulatorState, Meter
from meterstream_local.emulator.state import DEDUPE_WINDOW_SECONDS, LOG_COMPACT_MIN
from meterstream_local.emulator.validation import CheckedEvent

T0 = 1_800_000_000.0


def _batch(prefix: str, count: int, stamp: float, value: int = 1) -> list[CheckedEvent]:
    return [("usage", f"cus_{i % 5}", value, stamp, f"{prefix}-{i}") for i in range(count)]


def test_pruning_and_compaction_keep_dedupe_and_cancel_right() -> None:
    state = EmulatorState([Meter("usage")], now=T0)
    old_batches = LOG_COMPACT_MIN // 100 + 5
    for n in range(old_batches):
        assert state.accept(_batch(f"old{n}", 100, T0), T0) == (100, 0)
    later = T0 + 3600
    assert state.accept(_batch("new", 100, later, value=2), later) == (100, 0)

    # A day after the old batches: they leave the window (and the columns are compacted);
    # the newer batch stays a duplicate and stays cancelable.
    now = T0 + DEDUPE_WINDOW_SECONDS + 1
    accepted, duplicates = state.accept(_batch("old0", 100, now) + _batch("new", 100, now), now)

    assert (accepted, duplicates) == (100, 100)
    assert state._base > 0  # compaction happened: slots were renumbered
    assert not state.seen("old1-0")
    assert state.seen("new-42")
    assert state.cancel("usage", "new-42", now) is None
    assert state.cancel("usage", "new-42", now) == "already_canceled"
    assert state.cancel("usage", "old1-0", now) == "resource_missing"
    assert state.cancel("other", "new-43", now) == "event_name_mismatch"
    totals = state.totals()["usage"]
    assert sum(t["count"] for t in totals.values()) == old_batches * 100 + 100 + 100 - 1
    assert sum(t["sum"] for t in totals.values()) == old_batches * 100 + 200 + 100 - 2
    assert state.events_canceled == 1


def test_cancel_recomputes_last_from_the_remaining_events() -> None:
    state = EmulatorState([Meter("usage", formula="last")], now=T0)
    minute = T0 // 60 * 60
    state.accept(
        [
            ("usage", "cus_1", 3, minute + 1, "a"),
            ("usage", "cus_1", 9, minute + 30, "b"),
            ("usage", "cus_1", 4, minute + 20, "c"),
        ],
        T0,
    )
    window = [(int(minute), int(minute) + 60)]
    assert state.summaries("usage", "cus_1", window, "last")[0][2] == 9

    assert state.cancel("usage", "b", T0) is None

    assert state.summaries("usage", "cus_1", window, "last")[0][2] == 4
    assert state.summaries("usage", "cus_1", window, "sum")[0][2] == 7


def test_an_event_older_than_a_day_cannot_be_canceled() -> None:
    state = EmulatorState(now=T0)
    state.accept([("usage", "cus_1", 1, T0, "a")], T0)
    just_before_pruning = T0 + DEDUPE_WINDOW_SECONDS - 1

    assert state.cancel("usage", "a", just_before_pruning) is None
    state.accept([("usage", "cus_1", 1, T0, "b")], T0)
    assert state.cancel("usage", "b", T0 + DEDUPE_WINDOW_SECONDS + 1) == "resource_missing"
