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

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, Protocol

from connector.config import BatchingConfig

log = logging.getLogger("meterstream.concurrency")

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
#: ... in this many windows in a row: one slow window is more often the machine (a stall
#: of a busy host, a garbage collection) than Stripe.
LATENCY_WINDOWS = 2
#: Weight of each window's mean round trip in the baseline (an EWMA over windows): a
#: lasting change of Stripe's latency becomes the new baseline within about ten windows.
BASELINE_WEIGHT = 0.2
#: The shortest round trip is the least of the last this many windows' shortest: a lasting
#: change of Stripe's latency is followed within that many windows.
MIN_RTT_WINDOWS = 10
#: A cut to the accepted rate needs a whole window of sending since the last cut (else
#: x0.7): the retries a gate released arrive together, and a shorter span overstates it.
RATE_MIN_SECONDS = WINDOW_SECONDS
#: ... and at least this many accepted answers in that span.
RATE_MIN_ANSWERS = 3
#: A cut always lowers the limit, at least to this fraction of it.
CUT_MAX_FRACTION = 0.9
#: After a cut to the accepted rate, each probe past it waits this long: every process of
#: the fleet probes, so the fleet grows by one request in flight per process per probe
#: (at five each, 20 %): probing every second would meet the limit every few seconds.
RATE_PROBE_WINDOW_SECONDS = 8.0


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

    def gate_seconds(self, retry_after: float) -> float:
        """How long a 429 with ``Retry-After: retry_after`` holds every request of the
        process (the refused request itself always waits the whole ``retry_after``)."""
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

    def gate_seconds(self, retry_after: float) -> float:
        """Nothing else lowers a fixed limit's rate after a 429: the whole Retry-After."""
        return retry_after


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
        #: Answers to requests sent before this cannot cut again: the last cut's time, or a
        #: window later after a cut to the accepted rate (the rest of that second's 429s
        #: are echoes of the same overshoot, and the cut already accounted for it).
        self._cut_again_from = -math.inf
        #: The limit when the last cut happened: where 429s (or slow answers) began.
        self._limit_at_cut = math.inf
        #: How long the next window past that limit lasts: halved by each probe that passes.
        self._probe_window = PROBE_WINDOW_SECONDS
        #: The shortest a probe window gets by halving.
        self._probe_floor = WINDOW_SECONDS
        #: Accepted answers of the last ``WINDOW_SECONDS``: (when, round trip).
        self._accepted: deque[tuple[float, float]] = deque()
        #: When the first request after the last cut (or since creation) was sent: the
        #: delivered rate is measured from one round trip later, never across a gate pause.
        self._active_since: float | None = None
        #: The shortest round trip of each of the last ``MIN_RTT_WINDOWS`` windows.
        self._window_min_rtts: deque[float] = deque(maxlen=MIN_RTT_WINDOWS)
        # The current window (set by _open_window).
        self._window_opened = 0.0
        self._window_answers = 0
        self._window_rtt_total = 0.0
        self._window_min_rtt = math.inf
        self._window_saturated = False
        self._window_length = WINDOW_SECONDS
        #: Windows in a row whose round trip was clearly above the baseline.
        self._slow_windows = 0
        self._open_window(clock())
        self._report()

    @property
    def limit(self) -> int:
        return max(1, min(self.maximum, int(self._limit)))

    @property
    def in_flight(self) -> int:
        """Requests started and not yet finished."""
        return self._in_flight

    @property
    def min_rtt(self) -> float | None:
        """The shortest recent round trip of an accepted request (None: none yet)."""
        recent = min(self._window_min_rtts, default=math.inf)
        shortest = min(recent, self._window_min_rtt)
        return None if shortest == math.inf else shortest

    def gate_seconds(self, retry_after: float) -> float:
        """One shortest round trip (at most ``retry_after``): the cut lowers the rate, the
        refused request waits its Retry-After, and holding the others for all of it
        would stop every process that met the same second's limit for a whole second."""
        shortest = self.min_rtt
        return retry_after if shortest is None else min(retry_after, shortest)

    def started(self) -> float:
        self._in_flight += 1
        if self._in_flight >= self.limit:
            self._window_saturated = True
        now = self._clock()
        if self._active_since is None:
            self._active_since = now
        return now

    def finished(self, started: float, outcome: Outcome) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        now = self._clock()
        if outcome == "rate_limited":
            if started >= self._cut_again_from:
                self._cut(now, "429", rate_limited=True)
            return
        if outcome != "ok":
            # Outages (5xx, timeouts, refused connections) are the retry backoff's business;
            # they say nothing about how much Stripe would accept once it answers again.
            return
        rtt = now - started
        self._window_answers += 1
        self._window_rtt_total += rtt
        self._window_min_rtt = min(self._window_min_rtt, rtt)
        self._accepted.append((now, rtt))
        horizon = now - WINDOW_SECONDS
        while self._accepted[0][0] < horizon:
            self._accepted.popleft()
        if self._window_answers >= self.limit and now - self._window_opened >= self._window_length:
            self._close_window(now, started)

    # -- internals ----------------------------------------------------------------------

    def _open_window(self, now: float) -> None:
        self._window_opened = now
        self._window_answers = 0
        self._window_rtt_total = 0.0
        self._window_min_rtt = math.inf
        self._window_saturated = self._in_flight >= self.limit
        probing = self._limit + 1 >= self._limit_at_cut
        self._window_length = self._probe_window if probing else WINDOW_SECONDS

    def _close_window(self, now: float, started: float) -> None:
        self._window_min_rtts.append(self._window_min_rtt)
        mean_rtt = self._window_rtt_total / self._window_answers
        baseline = self.baseline_rtt
        self.baseline_rtt = (
            mean_rtt if baseline is None else baseline + BASELINE_WEIGHT * (mean_rtt - baseline)
        )
        congested = baseline is not None and self.latency_is_congested(mean_rtt, baseline)
        self._slow_windows = self._slow_windows + 1 if congested else 0
        if congested:
            if self._slow_windows >= LATENCY_WINDOWS and started >= self._cut_again_from:
                assert baseline is not None
                why = f"round trip {mean_rtt * 1000:.0f} ms, baseline {baseline * 1000:.0f} ms"
                self._cut(now, why, rate_limited=False)
                return
        elif self._window_saturated:
            if self._window_length > WINDOW_SECONDS:  # a probe that passed: probe sooner
                self._probe_window = max(self._probe_floor, self._probe_window / 2)
            grown = self._limit * 2 if self.slow_start else self._limit + 1
            self._set(min(float(self.maximum), grown), "fast answers")
        self._open_window(now)

    @staticmethod
    def latency_is_congested(mean_rtt: float, baseline: float) -> bool:
        """Whether a window's mean round trip is clearly above the baseline."""
        return (
            mean_rtt >= baseline * LATENCY_FACTOR
            and mean_rtt - baseline >= LATENCY_MIN_RISE_SECONDS
        )

    def accepted_rate(self, now: float) -> tuple[float, float] | None:
        """Accepted answers per second over the last ``WINDOW_SECONDS`` of sending (from
        one round trip after the first request since the last cut: never across a gate
        pause), and their mean round trip. None when too little was measured."""
        shortest = self.min_rtt
        if shortest is None or self._active_since is None:
            return None
        since = max(now - WINDOW_SECONDS, self._active_since + shortest)
        span = now - since
        rtts = [rtt for at, rtt in self._accepted if at > since]
        if span < RATE_MIN_SECONDS or len(rtts) < RATE_MIN_ANSWERS:
            return None
        return len(rtts) / span, sum(rtts) / len(rtts)

    def _cut(self, now: float, why: str, *, rate_limited: bool) -> None:
        """Congestion: down to the requests in flight that carried what Stripe accepted
        lately at the shortest round trip (x0.7 when that is unknown).

        Every process of a fleet that met the account limit hears its 429 in the same
        second, and what each had accepted over that second is its share of the limit:
        cutting to it (as TCP Westwood cuts to its bandwidth estimate) brings the fleet to
        the limit in one step, where x0.7 from far above takes a 429 burst per step."""
        self.slow_start = False
        self._cut_again_from = now
        # A slow round trip says nothing about the account's limit: what was accepted
        # while answers were slow (a busy machine, a slow Stripe) is no share of it.
        measured = self.accepted_rate(now) if rate_limited else None
        shortest = self.min_rtt
        self._active_since = None
        self._slow_windows = 0
        if measured is None or shortest is None:
            self._limit_at_cut = self._limit
            self._probe_window = PROBE_WINDOW_SECONDS
            self._probe_floor = WINDOW_SECONDS
            self._set(max(1.0, self._limit * DECREASE_FACTOR), why)
        else:
            rate = measured[0]
            cut = max(1.0, min(float(round(rate * shortest)), self._limit * CUT_MAX_FRACTION))
            self._limit_at_cut = cut  # where the fleet fits: probe past it
            self._probe_window = self._probe_floor = RATE_PROBE_WINDOW_SECONDS
            self._cut_again_from = now + WINDOW_SECONDS
            self._set(cut, f"{why}; {rate:.0f} requests/s accepted, {shortest * 1000:.0f} ms")
        self._open_window(now)

    def _set(self, limit: float, why: str) -> None:
        before = self.limit
        self._limit = limit
        if self.limit != before:
            log.debug("concurrency limit %d -> %d (%s)", before, self.limit, why)
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
