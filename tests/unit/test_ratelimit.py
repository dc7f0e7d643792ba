"""The account-wide budget is split across processes and enforced by token buckets."""

from __future__ import annotations

import asyncio

import pytest

from connector.config import RateLimitConfig
from connector.ratelimit import RateLimiter, TokenBucket


class VirtualTime:
    """A clock that only moves when the bucket sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_allows_one_second_burst_then_the_rate() -> None:
    time = VirtualTime()
    bucket = TokenBucket(10, clock=time.clock, sleep=time.sleep)
    seen: list[float] = []

    async def take() -> None:
        for _ in range(10):
            await bucket.acquire()
        seen.append(time.now)
        for _ in range(50):
            await bucket.acquire()
        seen.append(time.now)

    asyncio.run(take())
    assert seen[0] == 0.0  # the burst
    assert seen[1] == pytest.approx(5.0)  # then 10 per second


def test_the_limiter_paces_so_that_no_second_holds_more_than_the_budget() -> None:
    """95 % of 10 requests (100 events each) per second, after a long pause: never more
    than 10 requests or 1,000 events start within any one second."""
    time = VirtualTime()
    limiter = RateLimiter(
        RateLimitConfig(account_requests_per_second=9.5, account_events_per_second=950),
        workers=1,
        clock=time.clock,
        sleep=time.sleep,
    )
    starts: list[float] = []

    async def send(count: int) -> None:
        for _ in range(count):
            await limiter.acquire(100)
            starts.append(time.now)

    asyncio.run(send(40))
    time.now += 30  # idle: nothing may be saved up for a burst
    asyncio.run(send(40))
    for first in starts:
        assert sum(1 for t in starts if first <= t < first + 1) <= 10
    # And the budget is used: 40 requests of 100 events at 950 events/s.
    assert starts[39] == pytest.approx(39 * 100 / 950)


def test_a_take_larger_than_the_reserve_leaves_the_bucket_in_debt() -> None:
    time = VirtualTime()
    bucket = TokenBucket(100, capacity=1.0, clock=time.clock, sleep=time.sleep)

    async def take() -> None:
        await bucket.acquire(250)  # at once: one token was in reserve
        assert time.now == 0.0
        await bucket.acquire(1)  # waits for the 249 owed, then one more
        assert time.now == pytest.approx(2.5)

    asyncio.run(take())


def test_share_is_split_across_replicas_and_workers() -> None:
    limiter = RateLimiter(
        RateLimitConfig(
            account_requests_per_second=1000, account_events_per_second=60_000, replicas=5
        ),
        workers=2,
    )
    assert limiter.requests is not None
    assert limiter.events is not None
    assert limiter.requests.rate == 100
    assert limiter.events.rate == 6000


def test_no_budget_means_no_limiter() -> None:
    limiter = RateLimiter(RateLimitConfig(), workers=4)
    assert limiter.requests is None
    assert limiter.events is None
    asyncio.run(limiter.acquire(100))  # returns at once


def test_a_429_holds_every_request_of_the_process_until_retry_after() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(RateLimitConfig(), workers=1, clock=lambda: now[0], sleep=sleep)

    async def run() -> None:
        await limiter.acquire(100)
        assert slept == []  # no gate, no budget: at once
        limiter.hold(3.0)
        limiter.hold(1.0)  # a shorter Retry-After does not shorten the gate
        await limiter.acquire(100)
        await limiter.gate()

    asyncio.run(run())
    assert slept == [3.0]
