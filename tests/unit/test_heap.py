"""The collector settings the worker applies before its loop."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from connector import heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_gc")
def test_start_up_objects_are_frozen_and_young_collections_are_rare() -> None:
    made_at_start_up = [{"config": index} for index in range(100)]
    heap.tune_for_streaming()
    assert gc.get_freeze_count() >= len(made_at_start_up)
    assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, heap.OLDER_EVERY, heap.OLDER_EVERY)
    assert gc.isenabled(), "cycles are still collected"
