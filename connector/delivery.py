"""What to do with each Stripe answer: the retry, session and split policy for one batch.

- Success (200): every event of the batch is credited to its record.
- Outage (``BackoffError``) or a refused key (``AuthenticationError``): wait with
  exponential backoff and jitter, never less than ``Retry-After``, and retry for as long as
  it takes; a 429 also holds every other request of the process (a shared gate). Nothing
  is dead-lettered and nothing is credited, so offsets stay uncommitted (DESIGN 3.4).
- Session expired: renew through the shared provider and resend. If a session made for
  this resend is refused as expired before it served anything, renewing cannot help: the
  batch is dead-lettered as ``session_expired`` (DESIGN 3.3). A session that expires after
  serving requests is ordinary expiry and is simply renewed again. "Served" means any
  answer other than expiry: a batch refused for its data (400) was authenticated by that
  session too, so while a rejected batch is being split, the sessions it uses count.
- Rejected as invalid: the batch is split in halves until the events at fault are alone;
  only those are dead-lettered (``rejected_by_stripe``), the rest are sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_never,
    wait_exponential,
    wait_random,
)

from connector import metrics
from connector.batching import Batch
from connector.config import DeliveryConfig
from connector.errors import (
    AuthenticationError,
    BackoffError,
    DeadLetterReason,
    RejectedBatchError,
    SessionExpiredError,
    StripeError,
)
from connector.mapping import MeterEventBody
from connector.offsets import PendingRecord
from connector.ratelimit import RateLimiter
from connector.session import Session, SessionProvider

log = logging.getLogger("meterstream.delivery")

#: Consecutive expiries of healthy sessions for one batch before it is treated as an outage.
MAX_EXPIRED_RESENDS = 20
#: Sessions whose served-request counts are remembered (a process uses one at a time).
_SESSIONS_REMEMBERED = 8
#: While an outage lasts, log one line per this many seconds, not one per retry.
_OUTAGE_LOG_EVERY_SECONDS = 10.0


class EventSender(Protocol):
    """The sink's sending half (``StripeSink.send_events``)."""

    async def send_events(self, events: list[MeterEventBody], session: Session) -> str | None:
        """Send a batch; return the Request-Id."""
        ...


OnAccepted = Callable[[Batch, str | None], None]
OnDead = Callable[[PendingRecord, DeadLetterReason, str, str | None, MeterEventBody], None]


class _StillExpiredError(Exception):
    """A fresh session was refused as expired: renewal cannot help this batch."""

    def __init__(self, cause: SessionExpiredError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Delivery:
    """Delivers batches through one sink and one session provider, shared by all requests."""

    def __init__(
        self,
        sink: EventSender,
        sessions: SessionProvider,
        config: DeliveryConfig,
        *,
        limiter: RateLimiter,
        on_accepted: OnAccepted,
        on_dead: OnDead,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self._sessions = sessions
        self._config = config
        self._limiter = limiter
        self._on_accepted = on_accepted
        self._on_dead = on_dead
        self._sleep = sleep
        self._clock = clock
        self._gate_until = 0.0
        self._served: OrderedDict[str, int] = OrderedDict()
        # Exponential from the initial delay up to the cap, plus jitter so that many
        # workers that failed together do not retry together.
        self._backoff = wait_exponential(
            multiplier=config.backoff_initial_seconds, max=config.backoff_max_seconds
        ) + wait_random(0, config.backoff_initial_seconds)
        #: Monotonic time of the first failure of the current outage; None when healthy.
        self.failing_since: float | None = None
        #: What the current outage is, for logs and /readyz.
        self.last_failure: str | None = None
        #: Set while Stripe refuses the API key (or the base URL is wrong): not ready at once.
        self.auth_problem: str | None = None
        self._last_outage_log = 0.0
        self.in_flight = 0

    # -- the public entry point ------------------------------------------------------

    async def deliver(self, batch: Batch) -> None:
        """Deliver a batch to the end: accepted, dead-lettered, or abandoned by cancellation."""
        stack = [batch]
        while stack:
            part = stack.pop().drop_closed()
            if not part.events:
                continue
            try:
                request_id = await self._send_with_retries(part)
            except RejectedBatchError as exc:
                if len(part) == 1:
                    self._on_dead(
                        part.records[0],
                        "rejected_by_stripe",
                        str(exc),
                        exc.request_id,
                        part.events[0],
                    )
                else:
                    left, right = part.split()
                    stack.extend((right, left))
                continue
            except _StillExpiredError as exc:
                for record, event in zip(part.records, part.events, strict=True):
                    self._on_dead(record, "session_expired", str(exc), exc.cause.request_id, event)
                metrics.BATCHES.labels("session_expired").inc()
                continue
            self._on_accepted(part, request_id)

    # -- retries -----------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        delay = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, AuthenticationError):
            delay = max(delay, min(5.0, self._config.backoff_max_seconds))
        if retry_after is not None:
            delay = max(delay, float(retry_after))
        return delay

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause: str
        if isinstance(exc, BackoffError):
            cause = exc.cause
        elif isinstance(exc, AuthenticationError):
            cause = "unauthorized"
            self.auth_problem = str(exc)
        else:
            cause = "server_error"
        metrics.RETRIES.labels(cause).inc()
        metrics.BATCHES.labels("retried").inc()
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        self.last_failure = str(exc)
        if isinstance(exc, BackoffError) and exc.cause == "rate_limited" and exc.retry_after:
            self._gate_until = max(self._gate_until, now + exc.retry_after)
        if now - self._last_outage_log >= _OUTAGE_LOG_EVERY_SECONDS:
            self._last_outage_log = now
            extra = {"request_id": getattr(exc, "request_id", None)}
            if isinstance(exc, AuthenticationError):
                # Not an outage that passes by itself: an operator must fix the key or URL.
                log.error(
                    "Stripe refused the credentials; fix the configuration and restart "
                    "(retrying meanwhile; nothing is dead-lettered or committed): %s",
                    exc,
                    extra=extra,
                )
            else:
                log.warning(
                    "Stripe unavailable, retrying (nothing is dead-lettered): %s", exc, extra=extra
                )

    async def _send_with_retries(self, batch: Batch) -> str | None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((BackoffError, AuthenticationError)),
            wait=self._wait,
            stop=stop_never,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._send_once(batch)
        raise AssertionError("unreachable: tenacity retries forever or re-raises")

    async def _send_once(self, batch: Batch) -> str | None:
        live = batch.drop_closed()
        if not live.events:
            return None
        gate = self._gate_until - self._clock()
        if gate > 0:
            await self._sleep(gate)
        await self._limiter.acquire(len(live))
        session = await self._sessions.current()
        fresh = False
        expiries = 0
        while True:
            try:
                request_id = await self._post(live, session)
            except SessionExpiredError as exc:
                expiries += 1
                if fresh and self._served.get(session.id, 0) == 0:
                    raise _StillExpiredError(exc) from exc
                if expiries > MAX_EXPIRED_RESENDS:
                    raise BackoffError(str(exc), cause="server_error") from exc
                metrics.RETRIES.labels("session_expired").inc()
                renewed = await self._sessions.renew(session)
                fresh = self._served.get(renewed.id, 0) == 0
                session = renewed
                continue
            except RejectedBatchError:
                self._record_served(session)  # refused for its data: the token was good
                raise
            self._record_served(session)
            self._record_success()
            return request_id

    async def _post(self, batch: Batch, session: Session) -> str | None:
        started = time.perf_counter()
        self.in_flight += 1
        metrics.REQUESTS_IN_FLIGHT.inc()
        outcome = "ok"
        try:
            return await self._sink.send_events(batch.events, session)
        except SessionExpiredError:
            outcome = "session_expired"
            raise
        except BackoffError as exc:
            outcome = exc.cause
            raise
        except AuthenticationError:
            outcome = "unauthorized"
            raise
        except RejectedBatchError:
            outcome = "rejected"
            metrics.BATCHES.labels("rejected").inc()
            raise
        except StripeError:
            outcome = "server_error"
            raise
        finally:
            self.in_flight -= 1
            metrics.REQUESTS_IN_FLIGHT.dec()
            metrics.REQUEST_DURATION.labels(outcome).observe(time.perf_counter() - started)

    def _record_served(self, session: Session) -> None:
        served = self._served
        served[session.id] = served.get(session.id, 0) + 1
        served.move_to_end(session.id)
        while len(served) > _SESSIONS_REMEMBERED:
            served.popitem(last=False)

    def _record_success(self) -> None:
        if self.failing_since is not None:
            log.info("Stripe reachable again after %.1f s", self._clock() - self.failing_since)
        self.failing_since = None
        self.last_failure = None
        self.auth_problem = None

    def problem(self, *, not_ready_after: float) -> str | None:
        """Why the process should report not-ready because of Stripe, or None."""
        if self.auth_problem:
            return self.auth_problem
        if self.failing_since is not None:
            duration = self._clock() - self.failing_since
            if duration >= not_ready_after:
                return f"failing for {duration:.0f} s: {self.last_failure}"
        return None
