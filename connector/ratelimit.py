"""An account-wide request budget, shared out so that many pods never trip Stripe's limit.

Stripe limits the meter event stream per account (10,000 requests/s in livemode; its
changelog also speaks of events/s, so both can be set). Each process takes an equal share:
budget / (replicas * workers). A token bucket per dimension, one second of burst.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from connector.config import RateLimitConfig

#: Float slack so that a refill computed as 0.999999... tokens counts as one.
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens per second, at most ``rate`` (one second's worth) in reserve."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self, tokens: float = 1.0) -> None:
        """Wait until ``tokens`` are available, then take them (first come, first served)."""
        tokens = min(tokens, self.capacity)
        async with self._lock:
            while True:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
                self._updated = now
                if self._tokens >= tokens - _EPSILON:
                    self._tokens -= tokens
                    return
                await self._sleep((tokens - self._tokens) / self.rate)


class RateLimiter:
    """This process's share of the account-wide requests/s and events/s budgets."""

    def __init__(self, config: RateLimitConfig, *, workers: int) -> None:
        share = config.replicas * workers
        self.requests = (
            TokenBucket(config.account_requests_per_second / share)
            if config.account_requests_per_second
            else None
        )
        self.events = (
            TokenBucket(config.account_events_per_second / share)
            if config.account_events_per_second
            else None
        )

    async def acquire(self, events: int) -> None:
        """Wait for the budget of one request carrying ``events`` events."""
        if self.requests is not None:
            await self.requests.acquire(1)
        if self.events is not None:
            await self.events.acquire(events)
