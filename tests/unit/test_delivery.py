"""The per-batch policy: retries for outages, renewal on expiry, splitting rejected batches.

The sender here is a scripted fake: this is the pure decision logic. The same behaviour is
proved end to end against the emulator in tests/integration/test_connector.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from connector.batching import Batch
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


def _batch(n: int) -> Batch:
    state = PartitionOffsets("usage", 0)
    batch = Batch()
    for i in range(n):
        batch.events.append(
            {
                "event_name": "api_requests",
                "identifier": f"id-{i}",
                "timestamp": "2024-06-01T12:00:00.000Z",
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


class Harness:
    def __init__(self, answer: Callable[[list[dict], Session], Exception | None]) -> None:
        self.sender = ScriptedSender(answer)
        self.created = 0
        self.sleeps: list[float] = []
        self.accepted: list[str] = []
        self.dead: list[tuple[str, str]] = []

        async def create() -> Session:
            self.created += 1
            return Session(id=f"mes_{self.created}", token=f"tok_{self.created}", expires_at=1e12)

        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)

        def on_dead(
            record: PendingRecord, reason: str, message: str, request_id: object, event: dict
        ) -> None:
            self.dead.append((event["identifier"], reason))

        self.delivery = Delivery(
            self.sender,  # type: ignore[arg-type]
            SessionProvider(create, renew_margin_seconds=60),
            DeliveryConfig(backoff_initial_seconds=0.1, backoff_max_seconds=2.0),
            limiter=RateLimiter(RateLimitConfig(), workers=1),
            on_accepted=lambda batch, _rid: self.accepted.extend(
                e["identifier"] for e in batch.events
            ),
            on_dead=on_dead,  # type: ignore[arg-type]
            sleep=sleep,
        )

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
    problems: list[str | None] = []
    original = h.delivery._before_sleep

    def spy(state: object) -> None:
        original(state)  # type: ignore[arg-type]
        problems.append(h.delivery.problem(not_ready_after=3600))

    h.delivery._before_sleep = spy  # type: ignore[method-assign]
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


def test_fresh_session_still_refused_as_expired_dead_letters_the_batch() -> None:
    h = Harness(lambda _e, _s: SessionExpiredError("expired", status=401))
    h.run(_batch(4))
    assert h.accepted == []
    assert sorted(h.dead) == [(f"id-{i}", "session_expired") for i in range(4)]
    assert h.created == 2  # renewed once, then gave up on this batch


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
