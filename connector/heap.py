"""Garbage collector settings for a long-running stream: the cyclic collector's share of
the CPU, cut (docs/performance.md).

The ingest loop makes a handful of container objects per record (the decoded record, its
event and payload dicts, the events list, the offsets entry); reference counting frees
them once their batch is answered, and they form no cycles. With CPython's default
thresholds (a young collection every 700 new containers) the collector scans them every
hundred records or so while they are still buffered, promotes them, and scans them again
in the older generations, together with every object made at start-up (modules, the
configuration models, the HTTP clients). About a sixth of the connector's CPU went there.

So, once, when the loop is about to start: everything alive then is moved out of the
collector's sight (``gc.freeze``: start-up objects live as long as the process), and a
young collection waits for 50,000 new containers, by which time most of them are freed.
Cycles that do occur (an exception with its traceback, a cancelled task) are still
collected, a little later; the bench's peak RSS shows the memory this costs.
"""

from __future__ import annotations

import gc

#: New container objects before a young collection (CPython's default: 700).
YOUNG_THRESHOLD = 50_000
#: Young collections per middle one, and middle per old one (defaults: 10 and 10).
OLDER_EVERY = 20


def tune_for_streaming() -> None:
    """Freeze what start-up made and collect young objects rarely (call once, before the loop)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_EVERY, OLDER_EVERY)
