"""An account-wide request budget, shared out so that many pods never trip Stripe's limit.

Stripe limits the meter event stream per account (10,000 requests/s in livemode; its
changelog also speaks of events/s, so both can be set). Each process takes an equal share:
budget / (replicas * workers). A token bucket per dimension, paced: no burst, so that no
one-second window ever holds more than the budget (docs/stripe.md, "Rate limits").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from connector.config import RateLimitConfig

#: Float slack so that a refill computed as 0.999999... tokens counts as one.
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` in reserve (default: one second's
    worth). A take larger than what is in reserve waits for ``capacity`` (or all of its
    tokens, if fewer) and leaves the bucket in debt, so the rate holds for any size."""

    def __init__(
        self,
        rate: float,
        *,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0) if capacity is None else capacity
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` are available, then take them (first come, first served)."""
        needed = min(tokens, self.capacity)
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= needed - _EPSILON:
                    self._tokens -= tokens
                    return
                await self._sleep((needed - self._tokens) / self.rate)


class RateLimiter:
    """This process's share of the account-wide requests/s and events/s budgets, and the
    gate a 429 closes: its ``Retry-After`` holds every request of the process, not only
    the one refused (Stripe counts the account, so the others would be refused too)."""

    def __init__(
        self,
        config: RateLimitConfig,
        *,
        workers: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._gate_until = 0.0
        share = config.replicas * workers
        # Paced (one token in reserve): Stripe counts per second, and a bucket with a
        # second's burst lets twice the budget into one second after any pause, each
        # excess answered by a 429 whose Retry-After then holds the whole process.
        self.requests = (
            TokenBucket(
                config.account_requests_per_second / share, capacity=1.0, clock=clock, sleep=sleep
            )
            if config.account_requests_per_second
            else None
        )
        self.events = (
            TokenBucket(
                config.account_events_per_second / share, capacity=1.0, clock=clock, sleep=sleep
            )
            if config.account_events_per_second
            else None
        )

    def hold(self, seconds: float) -> None:
        """Stripe said ``Retry-After: seconds``: no request goes before then."""
        self._gate_until = max(self._gate_until, self._clock() + seconds)

    async def gate(self) -> None:
        """Wait while a 429's ``Retry-After`` holds the process."""
        gate = self._gate_until - self._clock()
        if gate > 0:
            await self._sleep(gate)

    async def acquire(self, events: int) -> None:
        """Wait for the gate and the budget of one request carrying ``events`` events."""
        await self.gate()
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.events is not None:
            await self.events.acquire(events)
