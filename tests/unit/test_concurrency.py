"""Adaptive request concurrency: AIMD over the in-flight limit, driven by a virtual clock."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import concurrency
from connector.concurrency import (
    INITIAL_LIMIT,
    AdaptiveConcurrency,
    FixedConcurrency,
    Outcome,
)
from connector.config import BatchingConfig


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _full_window(limiter: AdaptiveConcurrency, clock: Clock, rtt: float = 0.05) -> float:
    """Full use until the limit changes (at most a minute): ``limit`` requests in flight
    together, answered ok after ``rtt``, again and again. Returns the seconds it took."""
    opened = clock.now
    while True:
        batch = limiter.limit
        starts = [limiter.started() for _ in range(batch)]
        clock.now += rtt
        before = limiter.limit
        for started in starts:
            limiter.finished(started, "ok")
        if limiter.limit != before or clock.now - opened > 60:
            return clock.now - opened


def test_starts_small_and_doubles_per_full_window_until_the_maximum() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    assert limiter.limit == INITIAL_LIMIT
    seen = [limiter.limit]
    while limiter.limit < 64:
        _full_window(limiter, clock)
        seen.append(limiter.limit)
    assert seen == [4, 8, 16, 32, 64]
    _full_window(limiter, clock)
    assert limiter.limit == 64  # never above batching.max_in_flight


def test_a_window_is_at_least_a_second_long() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    for _ in range(7):  # 0.875 s of full use, 4 answers every 0.125 s
        starts = [limiter.started() for _ in range(4)]
        clock.now += 0.125
        for started in starts:
            limiter.finished(started, "ok")
    assert limiter.limit == 4
    starts = [limiter.started() for _ in range(4)]
    clock.now += 0.125
    for started in starts:
        limiter.finished(started, "ok")
    assert limiter.limit == 8


def test_no_growth_when_the_limit_was_never_reached() -> None:
    """An idle process (or one held by a token bucket) has no evidence that more would pass."""
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    for _ in range(100):  # ten seconds of one request at a time
        started = limiter.started()
        clock.now += 0.1
        limiter.finished(started, "ok")
    assert limiter.limit == INITIAL_LIMIT


def test_a_429_cuts_once_per_burst_and_ends_slow_start() -> None:
    """Nothing accepted yet (no rate to cut to): x0.7, once per burst."""
    clock = Clock()
    limiter = AdaptiveConcurrency(64, initial=16, clock=clock)
    starts = [limiter.started() for _ in range(16)]
    clock.now += 0.05
    for started in starts:  # the whole burst is refused: one cut (x0.7), not sixteen
        limiter.finished(started, "rate_limited")
    assert limiter.limit == 11
    assert not limiter.slow_start
    # A request sent after the cut and refused cuts again: 11.2 -> 7.84.
    started = limiter.started()
    clock.now += 0.05
    limiter.finished(started, "rate_limited")
    assert limiter.limit == 7


def _steady(limiter: AdaptiveConcurrency, clock: Clock, *, seconds: float, rtt: float) -> None:
    """``limiter.limit`` requests always in flight, each answered ok after ``rtt``."""
    pending = [limiter.started() for _ in range(limiter.limit)]
    end = clock.now + seconds
    while clock.now < end:
        clock.now += rtt
        for started in pending:
            limiter.finished(started, "ok")
        pending = [limiter.started() for _ in range(limiter.limit)]
    clock.now += rtt
    for started in pending:
        limiter.finished(started, "ok")


def test_a_429_cuts_to_what_was_accepted_over_the_last_second() -> None:
    """32 in flight at 100 ms, but the account took only 60 requests/s of this process:
    one cut to 6 (60/s x 100 ms), not x0.7 (22) and a 429 burst per further step."""
    clock = Clock()
    limiter = AdaptiveConcurrency(6, clock=clock)
    limiter._limit = 6.0
    _steady(limiter, clock, seconds=1.5, rtt=0.1)  # 60 requests/s accepted
    limiter.maximum = 64
    limiter._limit = 32.0  # slow start overshot; nothing of that was accepted yet
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 6
    assert not limiter.slow_start


def test_a_cut_needs_a_second_of_sending_since_the_last_one() -> None:
    """Retries released by a gate answer together: a shorter span would overstate the
    rate, so a 429 less than a second of sending after a cut falls back to x0.7; 429s
    to requests sent within a second of a cut to the rate do not cut again."""
    clock = Clock()
    limiter = AdaptiveConcurrency(10, initial=10, clock=clock)
    _steady(limiter, clock, seconds=1.5, rtt=0.1)
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 9  # 100/s x 100 ms = 10, but a cut takes at least 10 %
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 9  # the same second's 429s echo the overshoot already cut for
    _steady(limiter, clock, seconds=0.9, rtt=0.1)
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 6  # 9 x 0.7


def test_past_a_cut_to_the_accepted_rate_every_probe_waits_eight_seconds() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(6, initial=6, clock=clock)
    _steady(limiter, clock, seconds=1.5, rtt=0.1)
    limiter.maximum = 64
    limiter._limit = 8.0
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 6
    took = [_full_window(limiter, clock, rtt=0.1) for _ in range(3)]
    assert [round(t) for t in took] == [8, 8, 8]  # no halving: the whole fleet probes
    assert limiter.limit == 9


def test_a_429_holds_the_process_for_one_round_trip_not_the_whole_retry_after() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    assert limiter.gate_seconds(1.0) == 1.0  # nothing measured: all of it
    _full_window(limiter, clock, rtt=0.12)
    assert limiter.gate_seconds(1.0) == pytest.approx(0.12)
    assert limiter.gate_seconds(0.05) == 0.05  # never longer than Stripe asked
    assert FixedConcurrency(64).gate_seconds(1.0) == 1.0  # nothing else slows it down


def test_additive_increase_is_quick_back_to_the_last_cut_and_slow_past_it() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, initial=10, clock=clock)
    limiter.finished(limiter.started(), "rate_limited")  # cut at 10: 7.0
    assert limiter.limit == 7
    took = [_full_window(limiter, clock) for _ in range(6)]
    # 8 and 9 after one-second windows; 10 (where 429s began) only after a probe window,
    # and each probe that passes halves the next one.
    assert [round(t) for t in took] == [1, 1, 16, 8, 4, 2]
    assert limiter.limit == 13
    limiter._active_since = None  # as if the last second had been a gate pause
    limiter.finished(limiter.started(), "rate_limited")  # probing starts over
    assert limiter.limit == 9  # no rate measured: 13 * 0.7 = 9.1
    took = [_full_window(limiter, clock) for _ in range(4)]
    assert [round(t) for t in took] == [1, 1, 1, 16]


def test_the_429_after_a_second_of_use_cuts_to_the_accepted_rate() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, initial=10, clock=clock)
    limiter.finished(limiter.started(), "rate_limited")  # nothing accepted yet: x0.7
    assert limiter.limit == 7
    _full_window(limiter, clock)
    _full_window(limiter, clock)  # 9 in flight answered every 50 ms for the last second
    limiter.finished(limiter.started(), "rate_limited")
    assert limiter.limit == 8  # at most 0.9 x 9; the rate said 9


def test_never_below_one() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    for _ in range(10):
        started = limiter.started()
        clock.now += 0.01
        limiter.finished(started, "rate_limited")
    assert limiter.limit == 1


def test_other_failures_neither_grow_nor_cut() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    for _ in range(50):
        starts = [limiter.started() for _ in range(limiter.limit)]
        clock.now += 0.1
        for started in starts:
            limiter.finished(started, "failed")
    assert limiter.limit == INITIAL_LIMIT
    assert limiter.in_flight == 0


def test_latency_clearly_above_the_baseline_cuts() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    _full_window(limiter, clock, rtt=0.1)  # baseline 100 ms
    assert limiter.limit == 8
    assert limiter.baseline_rtt == pytest.approx(0.1)
    _full_window(limiter, clock, rtt=0.3)  # 3x and 200 ms above, two windows in a row
    assert limiter.limit == 5  # 8 * 0.7 (a slow round trip is no share of the account)
    assert not limiter.slow_start


def test_one_slow_window_is_not_congestion() -> None:
    """A busy host stalls every process on it for a moment; Stripe slowing down lasts."""
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    _full_window(limiter, clock, rtt=0.1)
    before = limiter.limit
    for _ in range(3):  # one window of 400 ms round trips, then fast again
        starts = [limiter.started() for _ in range(limiter.limit)]
        clock.now += 0.4
        for started in starts:
            limiter.finished(started, "ok")
    assert limiter.limit >= before


def test_latency_jitter_of_a_few_milliseconds_is_not_congestion() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    _full_window(limiter, clock, rtt=0.002)
    _full_window(limiter, clock, rtt=0.02)  # 10x the baseline, but only 18 ms more
    assert limiter.limit == 16


@pytest.mark.parametrize(
    ("mean", "baseline", "congested"),
    [(0.2, 0.1, True), (0.19, 0.1, False), (0.03, 0.01, False), (0.07, 0.02, True)],
)
def test_clearly_above_means_double_and_fifty_ms_more(
    mean: float, baseline: float, congested: bool
) -> None:
    assert AdaptiveConcurrency.latency_is_congested(mean, baseline) is congested


def test_a_lasting_latency_change_becomes_the_baseline() -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(64, clock=clock)
    _full_window(limiter, clock, rtt=0.05)
    for _ in range(30):  # Stripe got slower for good: 300 ms from now on
        _full_window(limiter, clock, rtt=0.3)
    assert limiter.baseline_rtt is not None
    assert limiter.baseline_rtt > 0.25
    before = limiter.limit
    _full_window(limiter, clock, rtt=0.3)
    assert limiter.limit == before + 1  # growing again, not cut


def test_gauge_hears_every_change() -> None:
    clock = Clock()
    heard: list[int] = []
    limiter = AdaptiveConcurrency(10, clock=clock, on_change=heard.append)
    _full_window(limiter, clock)
    _full_window(limiter, clock)
    limiter._active_since = None  # nothing measured since: x0.7
    started = limiter.started()
    limiter.finished(started, "rate_limited")
    assert heard == [4, 8, 10, 7]


def test_for_config_picks_fixed_or_adaptive() -> None:
    heard: list[int] = []
    fixed = concurrency.for_config(
        BatchingConfig(max_in_flight=32, adaptive_concurrency=False), on_change=heard.append
    )
    assert isinstance(fixed, FixedConcurrency)
    assert fixed.limit == 32
    fixed.finished(fixed.started(), "rate_limited")
    assert fixed.limit == 32
    adaptive = concurrency.for_config(BatchingConfig(max_in_flight=2), on_change=heard.append)
    assert isinstance(adaptive, AdaptiveConcurrency)
    assert adaptive.limit == 2  # the initial limit never exceeds max_in_flight
    assert heard == [32, 2]
    assert BatchingConfig().adaptive_concurrency is True


@settings(max_examples=300, deadline=None)
@given(
    maximum=st.integers(1, 128),
    initial=st.integers(1, 16),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["start", "ok", "rate_limited", "failed"]),
            st.floats(0, 2, allow_nan=False),
        ),
        max_size=300,
    ),
)
def test_the_limit_always_stays_within_one_and_the_maximum(
    maximum: int, initial: int, steps: list[tuple[str, float]]
) -> None:
    clock = Clock()
    limiter = AdaptiveConcurrency(maximum, initial=initial, clock=clock)
    pending: list[float] = []
    for action, advance in steps:
        clock.now += advance
        if action == "start" or not pending:
            pending.append(limiter.started())
        else:
            before = limiter.limit
            outcome: Outcome = action  # type: ignore[assignment]
            limiter.finished(pending.pop(0), outcome)
            if outcome == "failed":
                assert limiter.limit == before
            if outcome == "rate_limited":
                assert limiter.limit <= before
        assert 1 <= limiter.limit <= maximum
        assert limiter.in_flight == len(pending)


# -- a fleet against a per-second limit: the closed loop, simulated --------------------------


@dataclass
class _Process:
    limiter: AdaptiveConcurrency | FixedConcurrency
    in_flight: int = 0
    gate_until: float = 0.0


@dataclass
class _Simulation:
    """Processes sending back to back within their limit to a server that answers 429
    beyond ``per_second`` requests in each one-second window, with Retry-After 1 s, which
    holds each process as long as its limit says (``gate_seconds``: the delivery's gate)."""

    per_second: int
    rtt: float
    clock: Clock = field(default_factory=Clock)
    accepted: int = 0
    refused: int = 0
    accepted_by_second: dict[int, int] = field(default_factory=dict)

    queue: list[tuple[float, int, int, float]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _window: int = -1
    _used: int = 0

    def run(self, processes: list[_Process], until: float) -> None:
        """Advance to ``until`` (simulated seconds); may be called again to go on."""
        while self.clock.now < until:
            for index, process in enumerate(processes):
                if self.clock.now < process.gate_until:
                    continue
                while process.in_flight < process.limiter.limit:
                    process.in_flight += 1
                    token = process.limiter.started()
                    answer_at = self.clock.now + self.rtt
                    heapq.heappush(self.queue, (answer_at, next(self._seq), index, token))
            if not self.queue:  # every process is gated: wake at the first gate's end
                self.clock.now = min(p.gate_until for p in processes)
                continue
            answer_at, _, index, token = heapq.heappop(self.queue)
            self.clock.now = answer_at
            process = processes[index]
            process.in_flight -= 1
            second = int(answer_at - self.rtt / 2)  # counted when it reaches the server
            if second != self._window:
                self._window, self._used = second, 0
            if self._used < self.per_second:
                self._used += 1
                self.accepted += 1
                self.accepted_by_second[second] = self.accepted_by_second.get(second, 0) + 1
                process.limiter.finished(token, "ok")
            else:
                self.refused += 1
                process.limiter.finished(token, "rate_limited")
                gate = process.limiter.gate_seconds(1.0)
                process.gate_until = max(process.gate_until, self.clock.now + gate)


def test_simulated_fleet_finds_the_account_limit_with_few_429s() -> None:
    """Four processes, 200 requests/s for the account, 100 ms round trips: adaptive gets
    close to the limit within seconds with a small share refused; fixed at 64 each gets a
    429 storm (and its throughput only because every window's budget goes to the storm)."""
    adaptive = _Simulation(per_second=200, rtt=0.1)
    adaptive.run([_Process(AdaptiveConcurrency(64, clock=adaptive.clock)) for _ in range(4)], 60)
    fixed = _Simulation(per_second=200, rtt=0.1)
    fixed.run([_Process(FixedConcurrency(64)) for _ in range(4)], 60)

    def refused_share(sim: _Simulation) -> float:
        return sim.refused / (sim.accepted + sim.refused)

    rate = sum(adaptive.accepted_by_second.values()) / 60
    first_at_90 = min(s for s, n in adaptive.accepted_by_second.items() if n >= 0.9 * 200)
    assert rate >= 0.93 * 200  # about 97 %: start-up and one probe in 8 s per process
    assert first_at_90 <= 10
    assert refused_share(adaptive) <= 0.03
    assert refused_share(fixed) > 10 * refused_share(adaptive)


def test_simulated_restart_of_one_process_is_absorbed() -> None:
    """One process of four restarts from scratch (SIGKILL, new process) after 30 s."""
    sim = _Simulation(per_second=200, rtt=0.1)
    processes = [_Process(AdaptiveConcurrency(64, clock=sim.clock)) for _ in range(4)]
    sim.run(processes, 30)
    processes[0].limiter = AdaptiveConcurrency(64, clock=sim.clock)
    sim.run(processes, 60)
    after = sum(n for s, n in sim.accepted_by_second.items() if s >= 30) / 30
    assert after >= 0.9 * 200
    assert sim.refused / (sim.accepted + sim.refused) <= 0.03
