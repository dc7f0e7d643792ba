"""The per-batch policy: retries for outages, renewal on expiry, splitting rejected batches.

The sender here is a scripted fake: this is the pure decision logic. The same behaviour is
proved end to end against the emulator in tests/integration/test_connector.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from connector.batching import Batch
from connector.concurrency import Outcome
from connector.config import DeliveryConfig, RateLimitConfig
from connector.delivery import Delivery
from connector.errors import (
    AuthenticationError,
    BackoffError,
    RejectedBatchError,
    SessionExpiredError,
)
from connector.offsets import PartitionOffsets, PendingRecord
from connector.ratelimit import RateLimiter
from connector.session import Session, SessionProvider
from connector.timestamps import STRIPE_MAX_AGE_SECONDS, format_rfc3339_ms

#: The wall clock of these tests: one hour after the events' timestamp (well inside the window).
EVENT_TIME = 1717243200.0  # 2024-06-01T12:00:00Z
NOW = EVENT_TIME + 3600


def _batch(n: int, timestamps: list[float] | None = None) -> Batch:
    state = PartitionOffsets("usage", 0)
    batch = Batch()
    for i in range(n):
        batch.events.append(
            {
                "event_name": "api_requests",
                "identifier": f"id-{i}",
                "timestamp": format_rfc3339_ms(timestamps[i] if timestamps else EVENT_TIME),
                "payload": {"stripe_customer_id": "cus_1", "value": str(i)},
            }
        )
        batch.records.append(state.track(None, i))
    return batch


class ScriptedSender:
    """Answers each call with ``answer(events, session)``: None for 200, or an exception."""

    def __init__(self, answer: Callable[[list[dict], Session], Exception | None]) -> None:
        self.answer = answer
        self.calls: list[tuple[list[str], str]] = []

    async def send_events(self, events: list[dict], session: Session) -> str | None:
        self.calls.append(([e["identifier"] for e in events], session.id))
        error = self.answer(events, session)
        if error is not None:
            raise error
        return "req_ok"


class RecordingLimit:
    """A concurrency limit that records what delivery reports about each attempt."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.outcomes: list[str] = []

    @property
    def limit(self) -> int:
        return 1

    def started(self) -> float:
        self.in_flight += 1
        return float(len(self.outcomes))

    def finished(self, started: float, outcome: Outcome) -> None:
        self.in_flight -= 1
        self.outcomes.append(outcome)

    def gate_seconds(self, retry_after: float) -> float:
        return retry_after / 10


class Harness:
    def __init__(self, answer: Callable[[list[dict], Session], Exception | None]) -> None:
        self.sender = ScriptedSender(answer)
        self.concurrency = RecordingLimit()
        self.created = 0
        self.sleeps: list[float] = []
        self.accepted: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.messages: list[str] = []
        self.now = NOW

        async def create() -> Session:
            self.created += 1
            return Session(id=f"mes_{self.created}", token=f"tok_{self.created}", expires_at=1e12)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

        def on_dead(
            record: PendingRecord, reason: str, message: str, request_id: object, event: dict
        ) -> None:
            self.dead.append((event["identifier"], reason))
            self.messages.append(message)

        self.delivery = Delivery(
            self.sender,  # type: ignore[arg-type]
            SessionProvider(create, renew_margin_seconds=60),
            DeliveryConfig(
                backoff_initial_seconds=0.1, backoff_max_seconds=2.0, expiry_margin_seconds=1.0
            ),
            limiter=RateLimiter(RateLimitConfig(), workers=1, clock=lambda: self.now, sleep=sleep),
            concurrency=self.concurrency,
            on_accepted=lambda batch, _rid: self.accepted.extend(
                e["identifier"] for e in batch.events
            ),
            on_dead=on_dead,  # type: ignore[arg-type]
            sleep=sleep,
            clock=lambda: self.now,
            wall_clock=lambda: self.now,
        )

    def problems_while_retrying(self, *, not_ready_after: float) -> list[str | None]:
        """What ``problem()`` said before each backoff sleep (filled as the run goes)."""
        problems: list[str | None] = []
        original = self.delivery._before_sleep

        def spy(state: object) -> None:
            original(state)  # type: ignore[arg-type]
            problems.append(self.delivery.problem(not_ready_after=not_ready_after))

        self.delivery._before_sleep = spy  # type: ignore[method-assign]
        return problems

    def run(self, batch: Batch) -> None:
        asyncio.run(self.delivery.deliver(batch))


def test_rejected_batch_is_split_until_only_the_bad_events_are_dead_lettered() -> None:
    bad = {"id-13", "id-77"}

    def answer(events: list[dict], _s: Session) -> Exception | None:
        if bad & {e["identifier"] for e in events}:
            return RejectedBatchError("HTTP 400", code="invalid", status=400, request_id="req_x")
        return None

    h = Harness(answer)
    h.run(_batch(100))
    assert sorted(h.accepted) == sorted(f"id-{i}" for i in range(100) if f"id-{i}" not in bad)
    assert sorted(h.dead) == [("id-13", "rejected_by_stripe"), ("id-77", "rejected_by_stripe")]
    assert len(h.sender.calls) < 30  # bisection, not one request per event


def test_outages_are_retried_never_dead_lettered_and_retry_after_is_honoured() -> None:
    failures = [
        BackoffError("429", cause="rate_limited", retry_after=7.0, status=429),
        BackoffError("503", cause="server_error", status=503),
        BackoffError("timeout", cause="timeout"),
        BackoffError("refused", cause="connection"),
    ]

    def answer(_e: list[dict], _s: Session) -> Exception | None:
        return failures.pop(0) if failures else None

    h = Harness(answer)
    h.run(_batch(10))
    assert h.dead == []
    assert len(h.accepted) == 10
    assert len(h.sender.calls) == 5
    assert h.sleeps[0] >= 7.0  # Retry-After, never less
    assert all(s <= 7.0 + 1e-9 or s == h.sleeps[0] for s in h.sleeps)
    assert h.delivery.failing_since is None  # healthy again after the success


def test_refused_api_key_is_not_data_and_sets_a_problem() -> None:
    attempts = {"n": 0}

    def answer(_e: list[dict], _s: Session) -> Exception | None:
        attempts["n"] += 1
        if attempts["n"] <= 2:
            return AuthenticationError("HTTP 401", status=401)
        return None

    h = Harness(answer)
    problems = h.problems_while_retrying(not_ready_after=3600)
    h.run(_batch(3))
    assert h.dead == []
    assert problems
    assert all(p is not None and "401" in p for p in problems)
    assert h.delivery.problem(not_ready_after=3600) is None


def test_expired_session_is_renewed_and_the_same_batch_resent() -> None:
    def answer(_e: list[dict], session: Session) -> Exception | None:
        if session.id == "mes_1" and h.sender.calls.__len__() > 1:
            return SessionExpiredError("expired", status=401)
        return None

    h = Harness(answer)
    h.run(_batch(5))  # first batch succeeds on mes_1
    h.run(_batch(5))  # second: mes_1 expired -> renewed to mes_2, resent
    assert h.dead == []
    assert h.created == 2
    assert h.sender.calls[-1][1] == "mes_2"
    assert h.sender.calls[-1][0] == h.sender.calls[-2][0]  # the same events resent


def test_sessions_refused_even_when_fresh_are_an_outage_never_dead_letters() -> None:
    """Stripe refusing new sessions is Stripe's trouble: back off, renew, never DLQ."""
    refusals = {"left": 7}

    def answer(_e: list[dict], _s: Session) -> Exception | None:
        if refusals["left"]:
            refusals["left"] -= 1
            return SessionExpiredError("expired", status=401, request_id="req_exp")
        return None

    h = Harness(answer)
    problems = h.problems_while_retrying(not_ready_after=0.0)
    h.run(_batch(4))
    assert h.dead == []
    assert sorted(h.accepted) == [f"id-{i}" for i in range(4)]
    assert h.sleeps  # backed off between attempts, like any outage
    assert problems
    assert all(p is not None and "expired" in p for p in problems)  # not ready meanwhile
    # Each attempt renews once and resends at once; the next attempt starts fresh again.
    assert h.created >= 4
    assert h.delivery.problem(not_ready_after=0.0) is None


def test_events_that_age_out_while_waiting_are_dead_lettered_and_the_rest_goes_on() -> None:
    edge = NOW - STRIPE_MAX_AGE_SECONDS
    # Events 0 and 1 leave the window 5 s and 20 s from now; the others are an hour old.
    stamps = [edge + 5, edge + 20, EVENT_TIME, EVENT_TIME]
    outage = [BackoffError("503", cause="server_error", status=503) for _ in range(6)]
    h = Harness(lambda _e, _s: outage.pop(0) if outage else None)
    h.run(_batch(4, stamps))
    cutoff = NOW + sum(h.sleeps) - STRIPE_MAX_AGE_SECONDS + 1.0  # at the last attempt
    expected = {f"id-{i}" for i, t in enumerate(stamps) if t < cutoff}
    assert {"id-0"} <= expected  # the outage outlasted the first event's time left
    assert {identifier for identifier, _ in h.dead} == expected
    assert {reason for _, reason in h.dead} == {"timestamp_out_of_range"}
    assert all("expired while waiting" in m for m in h.messages)
    assert sorted(h.accepted) == sorted({f"id-{i}" for i in range(4)} - expected)
    # Nothing that aged out was ever offered again after it expired.
    last_call = h.sender.calls[-1][0]
    assert not expected & set(last_call)


def test_only_events_actually_sent_are_credited() -> None:
    """A partition handed over during a retry: its events are neither sent nor counted."""
    other = PartitionOffsets("usage", 1)
    calls = {"n": 0}

    def answer(_e: list[dict], _s: Session) -> Exception | None:
        calls["n"] += 1
        if calls["n"] == 1:
            other.closed = True  # revoked while the first attempt was refused
            return BackoffError("503", cause="server_error", status=503)
        return None

    h = Harness(answer)
    batch = _batch(4)
    batch.records[1] = other.track(None, 1)
    h.run(batch)
    assert h.sender.calls[-1][0] == ["id-0", "id-2", "id-3"]
    assert sorted(h.accepted) == ["id-0", "id-2", "id-3"]


def test_closed_partitions_are_not_sent() -> None:
    h = Harness(lambda _e, _s: None)
    batch = _batch(4)
    batch.records[0].partition.closed = True
    h.run(batch)
    assert h.sender.calls == []


@pytest.mark.parametrize("retry_after", [None, 0.5])
def test_wait_grows_exponentially_and_is_capped(retry_after: float | None) -> None:
    failures = [
        BackoffError("503", cause="server_error", retry_after=retry_after) for _ in range(8)
    ]
    h = Harness(lambda _e, _s: failures.pop(0) if failures else None)
    h.run(_batch(1))
    assert len(h.sleeps) == 8
    assert max(h.sleeps) <= 2.0 + 0.1  # backoff_max plus at most one jitter unit
    assert h.sleeps[-1] > h.sleeps[0]


def test_every_attempt_reports_its_outcome_to_the_concurrency_limit() -> None:
    """429 is a congestion signal; other failures are not; 200 is a fast answer."""
    script = iter(
        [
            BackoffError("HTTP 429", cause="rate_limited", status=429, retry_after=1.0),
            BackoffError("HTTP 503", cause="server_error", status=503),
            SessionExpiredError("expired", status=401),
            RejectedBatchError("HTTP 400", code="invalid", status=400, request_id="req_x"),
        ]
    )

    h = Harness(lambda _events, _s: next(script, None))
    h.run(_batch(2))
    # 429, 503, expired (renewed and resent at once), 400 (split), two singles accepted.
    assert h.concurrency.outcomes == ["rate_limited", "failed", "failed", "failed", "ok", "ok"]
    assert h.concurrency.in_flight == 0
    assert sorted(h.accepted) == ["id-0", "id-1"]


def test_a_batch_refused_again_and_again_waits_retry_after_not_an_ever_longer_backoff() -> None:
    """Stripe said when: a growing backoff would only hold the batch's records (and the
    resolved ones behind them) until fetching pauses."""
    failures = [
        BackoffError("429", cause="rate_limited", status=429, retry_after=1.0) for _ in range(8)
    ]
    h = Harness(lambda _e, _s: failures.pop(0) if failures else None)
    holds: list[float] = []
    h.delivery._limiter.hold = holds.append  # type: ignore[method-assign]
    h.run(_batch(1))
    assert len(h.sleeps) == 8
    assert all(1.0 <= s <= 1.0 + 0.1 for s in h.sleeps)  # Retry-After plus at most the jitter
    # The process's gate is what the concurrency limit asks (here a tenth), not the whole 1 s.
    assert holds == pytest.approx([0.1] * 8)


def test_every_attempt_waits_for_room_under_the_concurrency_limit() -> None:
    """Deliveries started before a cut (retries above all) must not all go out together."""
    on_the_wire = {"now": 0, "most": 0}

    class SlowSender:
        async def send_events(self, events: list[dict], session: Session) -> str | None:
            on_the_wire["now"] += 1
            on_the_wire["most"] = max(on_the_wire["most"], on_the_wire["now"])
            for _ in range(3):
                await asyncio.sleep(0)
            on_the_wire["now"] -= 1
            return "req_ok"

    h = Harness(lambda _e, _s: None)
    h.delivery._sink = SlowSender()  # type: ignore[assignment]

    async def five_at_once() -> None:
        await asyncio.gather(*(h.delivery.deliver(_batch(2)) for _ in range(5)))

    asyncio.run(five_at_once())
    assert on_the_wire["most"] == 1  # RecordingLimit.limit
    assert len(h.accepted) == 10
    assert h.delivery._attempts == 0


def test_a_delivery_waiting_out_a_429_counts_as_resting_and_says_so() -> None:
    """It holds no place on the wire while it waits: the worker starts another delivery in
    its place (else a process whose requests were all refused sends nothing that second).
    An outage's backoff is not resting: more deliveries would only meet the same outage."""
    failures: list[Exception] = [
        BackoffError("HTTP 503", cause="server_error", status=503),
        BackoffError("429", cause="rate_limited", status=429, retry_after=1.0),
        BackoffError("429", cause="rate_limited", status=429, retry_after=1.0),
    ]
    h = Harness(lambda _e, _s: failures.pop(0) if failures else None)
    resting_during_sleep: list[int] = []
    told: list[int] = []

    async def sleep(seconds: float) -> None:
        resting_during_sleep.append(h.delivery.resting)
        h.now += seconds

    h.delivery._sleep = sleep  # type: ignore[method-assign]
    h.delivery.listen(
        on_accepted=lambda batch, _rid: h.accepted.extend(e["identifier"] for e in batch.events),
        on_dead=lambda *_args: None,
        on_resting=lambda: told.append(h.delivery.resting),
    )
    h.run(_batch(1))
    assert resting_during_sleep == [0, 1, 1]  # the 503's backoff, then each Retry-After
    assert told == [1, 1]  # heard as each rest began
    assert h.delivery.resting == 0
    assert h.accepted == ["id-0"]
