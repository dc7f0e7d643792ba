"""How many requests a process may have in flight: fixed, or found by AIMD (docs/concurrency.md).

Stripe limits the meter event stream per account, and a fleet of processes cannot know its
share of that limit unless someone writes it into ``rate_limit``. Adaptive concurrency
finds it from Stripe's answers, the way TCP congestion control finds a link's capacity:

- start small (``INITIAL_LIMIT``) and double the limit after every window of fast
  successful answers (slow start) until the first sign of congestion;
- from then on add one per such window (additive increase);
- on a 429, or when a window's mean round-trip time rises clearly above its baseline,
  multiply the limit by ``DECREASE_FACTOR`` (multiplicative decrease, never below 1).

A window closes once it holds at least ``limit`` answers (about one round trip at full
use) and lasts at least ``WINDOW_SECONDS``: Stripe counts requests per second, so an
increase can take up to a second to be answered with a 429, and growing faster than that
overshoots before the signal arrives. The limit grows only when it was actually reached in
the window: a process that is idle, or held back by a ``rate_limit`` token bucket, gives no
evidence that more would be accepted. Only answers to requests sent after the last cut can
cut again, so one burst of 429s halves the limit once, not once per request.

Pure logic: the clock is injected; nothing here sleeps, and ``Retry-After`` is honoured by
the delivery's shared gate, not here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

from connector.config import BatchingConfig

#: What one attempt's answer says about congestion.
Outcome = Literal["ok", "rate_limited", "failed"]

#: Where the adaptive limit starts: small enough that a fleet starting together does not
#: open with a storm of 429s, large enough that slow start reaches 64 in four windows.
INITIAL_LIMIT = 4
#: The multiplicative decrease (CUBIC's; never below 1). A fleet's processes meet a
#: per-second limit in the same second and cut together, so the fleet's mean use is about
#: (1 + factor) / 2 of the limit: 0.5 would leave a quarter unused (docs/concurrency.md).
DECREASE_FACTOR = 0.7
#: The shortest window: per-second rate limits answer an increase within a second.
WINDOW_SECONDS = 1.0
#: Above the limit at which the last cut happened, a window lasts this long instead: the
#: way back to where 429s began is quick, probing past it is slow (so a fleet that found
#: the account limit meets it rarely, each meeting costing a Retry-After pause).
PROBE_WINDOW_SECONDS = 16.0
#: "Clearly above the baseline": a window's mean round trip is at least this many times the
#: baseline, and at least ``LATENCY_MIN_RISE_SECONDS`` above it (so the jitter of a busy
#: event loop on loopback, a few milliseconds, never counts as congestion).
LATENCY_FACTOR = 2.0
LATENCY_MIN_RISE_SECONDS = 0.05
#: Weight of each window's mean round trip in the baseline (an EWMA over windows): a
#: lasting change of Stripe's latency becomes the new baseline within about ten windows.
BASELINE_WEIGHT = 0.2


class ConcurrencyLimit(Protocol):
    """What the worker reads (``limit``) and what delivery reports (each attempt)."""

    @property
    def limit(self) -> int:
        """Requests the process may have in flight now."""
        ...

    def started(self) -> float:
        """A request is being sent: returns its start, to hand back to ``finished``."""
        ...

    def finished(self, started: float, outcome: Outcome) -> None:
        """The request sent at ``started`` was answered (or failed) with ``outcome``."""
        ...


class FixedConcurrency:
    """``batching.adaptive_concurrency: false``: always ``max_in_flight``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def started(self) -> float:
        return 0.0

    def finished(self, started: float, outcome: Outcome) -> None:
        return None


class AdaptiveConcurrency:
    """AIMD over the number of requests in flight, bounded by ``maximum``."""

    def __init__(
        self,
        maximum: int,
        *,
        initial: int = INITIAL_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        if maximum < 1 or initial < 1:
            raise ValueError("maximum and initial must be at least 1")
        self.maximum = maximum
        self._clock = clock
        self._on_change = on_change
        self._limit = float(min(initial, maximum))
        #: True until the first congestion signal: grow by doubling, not by one.
        self.slow_start = True
        #: Exponentially weighted mean of past windows' mean round trips (None: no window yet).
        self.baseline_rtt: float | None = None
        self._in_flight = 0
        #: Start time of the last cut: answers to requests sent before it cannot cut again.
        self._last_cut = -math.inf
        #: The limit when the last cut happened: where 429s (or slow answers) began.
        self._limit_at_cut = math.inf
        #: How long the next window past that limit lasts: halved by each probe that passes.
        self._probe_window = PROBE_WINDOW_SECONDS
        self._open_window(clock())
        self._report()

    @property
    def limit(self) -> int:
        return max(1, min(self.maximum, int(self._limit)))

    @property
    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        return self._in_flight

    def started(self) -> float:
        self._in_flight += 1
        if self._in_flight >= self.limit:
            self._window_saturated = True
        return self._clock()

    def finished(self, started: float, outcome: Outcome) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        now = self._clock()
        if outcome == "rate_limited":
            if started >= self._last_cut:
                self._cut(now)
            return
        if outcome != "ok":
            # Outages (5xx, timeouts, refused connections) are the retry backoff's business;
            # they say nothing about how much Stripe would accept once it answers again.
            return
        self._window_answers += 1
        self._window_rtt_total += now - started
        if self._window_answers >= self.limit and now - self._window_opened >= self._window_length:
            self._close_window(now, started)

    # -- internals ----------------------------------------------------------------------

    def _open_window(self, now: float) -> None:
        self._window_opened = now
        self._window_answers = 0
        self._window_rtt_total = 0.0
        self._window_saturated = self._in_flight >= self.limit
        probing = self._limit + 1 >= self._limit_at_cut
        self._window_length = self._probe_window if probing else WINDOW_SECONDS

    def _close_window(self, now: float, started: float) -> None:
        mean_rtt = self._window_rtt_total / self._window_answers
        baseline = self.baseline_rtt
        self.baseline_rtt = (
            mean_rtt if baseline is None else baseline + BASELINE_WEIGHT * (mean_rtt - baseline)
        )
        if baseline is not None and self.latency_is_congested(mean_rtt, baseline):
            if started >= self._last_cut:
                self._cut(now)
                return
        elif self._window_saturated:
            if self._window_length > WINDOW_SECONDS:  # a probe that passed: probe sooner
                self._probe_window = max(WINDOW_SECONDS, self._probe_window / 2)
            grown = self._limit * 2 if self.slow_start else self._limit + 1
            self._set(min(float(self.maximum), grown))
        self._open_window(now)

    @staticmethod
    def latency_is_congested(mean_rtt: float, baseline: float) -> bool:
        """Whether a window's mean round trip is clearly above the baseline."""
        return (
            mean_rtt >= baseline * LATENCY_FACTOR
            and mean_rtt - baseline >= LATENCY_MIN_RISE_SECONDS
        )

    def _cut(self, now: float) -> None:
        self.slow_start = False
        self._last_cut = now
        self._limit_at_cut = self._limit
        self._probe_window = PROBE_WINDOW_SECONDS
        self._set(max(1.0, self._limit * DECREASE_FACTOR))
        self._open_window(now)

    def _set(self, limit: float) -> None:
        before = self.limit
        self._limit = limit
        if self.limit != before:
            self._report()

    def _report(self) -> None:
        if self._on_change is not None:
            self._on_change(self.limit)


def for_config(
    config: BatchingConfig, *, on_change: Callable[[int], None] | None = None
) -> AdaptiveConcurrency | FixedConcurrency:
    """The limit ``batching`` asks for; ``on_change`` hears every new value (the gauge)."""
    if config.adaptive_concurrency:
        return AdaptiveConcurrency(config.max_in_flight, on_change=on_change)
    if on_change is not None:
        on_change(config.max_in_flight)
    return FixedConcurrency(config.max_in_flight)
