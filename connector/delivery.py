"""What to do with each Stripe answer: the retry, session and split policy for one batch.

- Success (200): every event that was sent is credited to its record.
- Outage (``BackoffError``) or a refused key (``AuthenticationError``): wait with
  exponential backoff and jitter, never less than ``Retry-After``, and retry for as long as
  it takes; a 429 also holds every other request of the process (a shared gate). Nothing
  is dead-lettered and nothing is credited, so offsets stay uncommitted
  (docs/architecture.md, "Outages are not bad data").
- Session expired: renew through the shared provider and resend at once. If the renewed
  session is refused too, Stripe is in trouble, not the data: that is an outage like a
  5xx (backoff, a fresh session on the next attempt, not ready after a while), and a valid
  record is never dead-lettered for it.
- Before every attempt, events that aged out of Stripe's 35-day window while they waited
  (an outage, a slow backfill, retries) are dead-lettered as ``timestamp_out_of_range``;
  the rest of the batch goes on.
- Rejected as invalid: the batch is split in halves until the events at fault are alone;
  only those are dead-lettered (``rejected_by_stripe``), the rest are sent.
- A connected account's session refused with a 4xx that is neither about the key (401,
  403: not ready, retried) nor an outage: the account cannot take events (deleted, say),
  so the whole batch is dead-lettered (``rejected_by_stripe``, the message naming the
  account). The platform's own session refused so is an outage.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from operator import itemgetter
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
from connector.concurrency import ConcurrencyLimit, FixedConcurrency, Outcome
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
from connector.session import AccountSessions, Session, SessionProvider
from connector.timestamps import STRIPE_MAX_AGE_SECONDS, expiry_cutoff

log = logging.getLogger("meterstream.delivery")
#: What is retried (an outage, or credentials an operator may still fix); the rest is final.
_RETRYABLE = (BackoffError, AuthenticationError)
_RETRY_ON = retry_if_exception_type(_RETRYABLE)
_timestamp_of = itemgetter("timestamp")


class EventSender(Protocol):
    """The sink's sending half (``StripeSink.send_events``)."""

    async def send_events(self, events: list[MeterEventBody], session: Session) -> str | None:
        """Send a batch; return the Request-Id."""
        ...


OnAccepted = Callable[[Batch, str | None], None]
OnDead = Callable[[PendingRecord, DeadLetterReason, str, str | None, MeterEventBody], None]


def _unheard(*_args: object) -> None:
    raise RuntimeError("Delivery has no listener: call listen() before deliver()")


def _nothing() -> None:
    return None


class _RefusedError(Exception):
    """Stripe refused ``batch`` (the events actually sent) as invalid."""

    def __init__(self, batch: Batch, cause: RejectedBatchError) -> None:
        super().__init__(str(cause))
        self.batch = batch
        self.cause = cause


class _AccountRefusedError(Exception):
    """Stripe refused a meter event session for ``batch``'s connected account with a 4xx
    that is neither about the key nor an outage (a deleted or unusable account)."""

    def __init__(self, batch: Batch, cause: RejectedBatchError) -> None:
        super().__init__(str(cause))
        self.batch = batch
        self.cause = cause


class Delivery:
    """Delivers batches through one sink and one session provider per account, shared by
    all requests (the rate limiter and the 429 gate stay per process: one Stripe platform
    limit covers every connected account)."""

    def __init__(
        self,
        sink: EventSender,
        sessions: SessionProvider | AccountSessions,
        config: DeliveryConfig,
        *,
        limiter: RateLimiter,
        concurrency: ConcurrencyLimit | None = None,
        on_accepted: OnAccepted | None = None,
        on_dead: OnDead | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        #: One session provider per account: each batch uses its own account's session.
        self._sessions = (
            sessions if isinstance(sessions, AccountSessions) else AccountSessions.of(sessions)
        )
        self._config = config
        self._limiter = limiter
        #: Hears every attempt's outcome and latency (adaptive concurrency).
        self._concurrency: ConcurrencyLimit = concurrency or FixedConcurrency(1)
        #: Attempts on the wire now, and those waiting for one of them to finish: the limit
        #: holds every attempt, retries included (a cut applies to them at once).
        self._attempts = 0
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._on_accepted: OnAccepted = on_accepted or _unheard
        self._on_dead: OnDead = on_dead or _unheard
        self._on_resting: Callable[[], None] = _nothing
        #: Deliveries waiting out a 429's ``Retry-After``: they hold no place on the wire,
        #: and the worker does not count them against the limit (docs/concurrency.md).
        self.resting = 0
        self._sleep = sleep
        self._clock = clock
        self._wall_clock = wall_clock
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

    # -- the public entry point ------------------------------------------------------

    def listen(
        self,
        *,
        on_accepted: OnAccepted,
        on_dead: OnDead,
        on_resting: Callable[[], None] | None = None,
    ) -> None:
        """Who is told of each outcome (the loop that owns the records), and who hears that
        a delivery began waiting out a 429 (``resting`` rose: room for another one)."""
        self._on_accepted = on_accepted
        self._on_dead = on_dead
        self._on_resting = on_resting or _nothing

    async def deliver(self, batch: Batch) -> None:
        """Deliver a batch to the end: accepted, dead-lettered, or abandoned by cancellation."""
        stack = [batch]
        while stack:
            part = stack.pop()
            try:
                sent, request_id = await self._send_with_retries(part)
            except _AccountRefusedError as refused:
                # The account, not one event: every event of the batch, without splitting.
                cause = refused.cause
                for event, record in zip(refused.batch.events, refused.batch.records, strict=True):
                    self._on_dead(record, "rejected_by_stripe", str(cause), cause.request_id, event)
                continue
            except _RefusedError as refused:
                sent, exc = refused.batch, refused.cause
                if len(sent) == 1:
                    self._on_dead(
                        sent.records[0],
                        "rejected_by_stripe",
                        str(exc),
                        exc.request_id,
                        sent.events[0],
                    )
                else:
                    left, right = sent.split()
                    stack.extend((right, left))
                continue
            if sent.events:
                self._on_accepted(sent, request_id)

    def _live(self, batch: Batch) -> Batch:
        """``batch`` without handed-over events, and with aged-out events dead-lettered."""
        live = batch.drop_closed()
        if not live.events:
            return live
        cutoff = expiry_cutoff(self._wall_clock(), self._config.expiry_margin_seconds)
        # Wire timestamps are fixed-width RFC 3339 in UTC: text order is time order.
        if min(map(_timestamp_of, live.events)) >= cutoff:
            return live
        kept = Batch(account=batch.account)
        for event, record in zip(live.events, live.records, strict=True):
            if event["timestamp"] >= cutoff:
                kept.events.append(event)
                kept.records.append(record)
                continue
            self._on_dead(
                record,
                "timestamp_out_of_range",
                f"expired while waiting to be sent: timestamp {event['timestamp']} is now older "
                f"than Stripe's {STRIPE_MAX_AGE_SECONDS // 86400}-day window (checked before "
                "each attempt, with delivery.expiry_margin_seconds of margin)",
                None,
                event,
            )
        return kept

    # -- retries -----------------------------------------------------------------------

    def _wait(self, state: RetryCallState) -> float:
        delay = float(self._backoff(state))
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(exc, AuthenticationError):
            delay = max(delay, min(5.0, self._config.backoff_max_seconds))
        if retry_after is not None:
            if isinstance(exc, BackoffError) and exc.cause == "rate_limited":
                # Stripe said when: then, plus jitter, however often this batch met a 429.
                # Backing off further would hold its records (and every resolved record
                # behind them) until fetching pauses, for no benefit: the gate already
                # spaces the process's requests (docs/concurrency.md).
                return float(retry_after) + random.uniform(0, self._config.backoff_initial_seconds)
            delay = max(delay, float(retry_after))
        return delay

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, AuthenticationError):
            self.auth_problem = str(exc)
        metrics.RETRIES.labels(
            exc.outcome if isinstance(exc, StripeError) else "server_error"
        ).inc()
        metrics.BATCHES.labels("retried").inc()
        now = self._clock()
        if self.failing_since is None:
            self.failing_since = now
        self.last_failure = str(exc)
        if isinstance(exc, BackoffError) and exc.cause == "rate_limited" and exc.retry_after:
            self._limiter.hold(self._concurrency.gate_seconds(exc.retry_after))
        # One line per retry; connector.logs lets one per problem through per interval.
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

    async def _send_with_retries(self, batch: Batch) -> tuple[Batch, str | None]:
        # The first attempt goes without the retry machinery (building it costs more than
        # the request's own Python work); a failure is handed to it as its attempt 1, so
        # backoff, logging and metrics are exactly those of any failed attempt.
        try:
            return await self._send_once(batch)
        except _RETRYABLE as exc:
            first_failure: BaseException | None = exc
            last_failure: BaseException = exc

        async def rest(seconds: float) -> None:
            """Sleep out the wait; after a 429 as one of the ``resting`` deliveries."""
            rate_limited = (
                isinstance(last_failure, BackoffError) and last_failure.cause == "rate_limited"
            )
            if not rate_limited:
                await self._sleep(seconds)
                return
            self.resting += 1
            self._on_resting()
            try:
                await self._sleep(seconds)
            finally:
                self.resting -= 1

        retrying = AsyncRetrying(
            retry=_RETRY_ON,
            wait=self._wait,
            stop=stop_never,
            sleep=rest,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure is not None:
                    failure, first_failure = first_failure, None
                    raise failure
                try:
                    return await self._send_once(batch)
                except _RETRYABLE as exc:
                    last_failure = exc
                    raise
        raise AssertionError("unreachable: tenacity retries forever or re-raises")

    async def _send_once(self, batch: Batch) -> tuple[Batch, str | None]:
        """One attempt: the events actually sent and Stripe's Request-Id."""
        await self._limiter.gate()  # a 429's Retry-After, before deciding what is still live
        live = self._live(batch)
        if not live.events:
            return live, None
        await self._limiter.acquire(len(live))
        sessions = self._sessions.provider(batch.account)
        try:
            session = await sessions.current()
        except RejectedBatchError as exc:
            if live.account is None:  # the platform's own session: not the data's fault
                raise BackoffError(
                    str(exc), cause="server_error", status=exc.status, request_id=exc.request_id
                ) from exc
            raise _AccountRefusedError(live, exc) from exc
        try:
            try:
                request_id = await self._post(live, session)
            except SessionExpiredError:
                # Ordinary expiry: one renewal (shared by every request refused with the same
                # token) and the same batch again at once.
                metrics.RETRIES.labels("session_expired").inc()
                session = await sessions.renew(session)
                request_id = await self._post(live, session)
        except SessionExpiredError as exc:
            # Refused again right after a renewal: an outage. Back off; the next attempt
            # starts with yet another session.
            sessions.expire(session)
            raise BackoffError(
                f"{exc} (again with a new session)",
                cause="session_expired",
                status=exc.status,
                request_id=exc.request_id,
            ) from exc
        except RejectedBatchError as exc:
            raise _RefusedError(live, exc) from exc
        self._record_success()
        return live, request_id

    async def _room(self) -> None:
        """Wait until the concurrency limit has room for one more attempt, then take it.

        The worker starts no more deliveries than the limit, but deliveries started before
        a cut (retries of a 429 burst above all) would otherwise all go out together when
        the Retry-After gate opens, above the limit that was just cut."""
        while self._attempts >= self._concurrency.limit:
            waiter = asyncio.get_running_loop().create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_room()  # woken and cancelled together: wake the next one
                raise
        self._attempts += 1

    def _pass_room(self) -> None:
        """Wake the longest waiting attempt, if any."""
        while self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _post(self, batch: Batch, session: Session) -> str | None:
        await self._room()
        try:
            return await self._post_with_room(batch, session)
        finally:
            self._attempts -= 1
            self._pass_room()

    async def _post_with_room(self, batch: Batch, session: Session) -> str | None:
        started = time.perf_counter()
        sent_at = self._concurrency.started()
        metrics.REQUESTS_IN_FLIGHT.inc()
        outcome = "ok"
        congestion: Outcome = "failed"
        try:
            request_id = await self._sink.send_events(batch.events, session)
            congestion = "ok"
            return request_id
        except StripeError as exc:
            outcome = exc.outcome
            if outcome == "rate_limited":
                congestion = "rate_limited"
            if isinstance(exc, RejectedBatchError):
                metrics.BATCHES.labels("rejected").inc()
            raise
        finally:
            self._concurrency.finished(sent_at, congestion)
            metrics.REQUESTS_IN_FLIGHT.dec()
            metrics.REQUEST_DURATION.labels(outcome).observe(time.perf_counter() - started)

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
