"""SessionProvider: lazy, renewed ahead of expiry, single-flight, failures shared and retried."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from connector.session import MIN_SESSION_USE_SECONDS, Session, SessionProvider

T = TypeVar("T")


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Creator:
    """A scripted ``create``: sessions of ``lifetime`` seconds, optionally held at a gate."""

    def __init__(self, clock: Clock, lifetime: float = 900.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.entered: asyncio.Event | None = None
        self.failures: list[Exception] = []

    async def __call__(self) -> Session:
        self.calls += 1
        if self.entered is not None:
            self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        n = self.calls
        return Session(
            id=f"mes_{n}", token=f"tok_secret_{n}", expires_at=self.clock() + self.lifetime
        )


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


def test_nothing_is_created_until_first_use_then_one_session_is_shared() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        assert create.calls == 0
        assert provider.seconds_until_expiry() is None
        first = await provider.current()
        clock.now += 100
        again = await provider.current()
        assert first is again
        assert create.calls == 1
        assert provider.renewals == 1
        assert provider.seconds_until_expiry() == pytest.approx(800)

    _run(scenario)


def test_renewed_ahead_of_expiry_by_the_margin() -> None:
    clock = Clock(1_000.0)
    create = Creator(clock, lifetime=900)  # expires at 1900
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        first = await provider.current()
        clock.now = 1_839.999
        assert await provider.current() is first
        clock.now = 1_840.0  # expires_at - margin
        second = await provider.current()
        assert second.id == "mes_2"
        assert second.expires_at == 1_840.0 + 900
        assert provider.renewals == 2

    _run(scenario)


def test_a_short_session_is_renewed_at_half_life_not_on_every_call() -> None:
    clock = Clock(0.0)
    create = Creator(clock, lifetime=10)  # an emulator knob: shorter than the 60 s margin
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        first = await provider.current()
        clock.now = 4.9
        assert await provider.current() is first
        clock.now = 5.0
        assert (await provider.current()).id == "mes_2"

    _run(scenario)


def test_a_session_that_looks_expired_on_a_skewed_clock_is_still_used_briefly() -> None:
    clock = Clock(10_000.0)
    create = Creator(clock, lifetime=-300)  # our clock runs 20 minutes ahead of Stripe's
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        first = await provider.current()
        for _ in range(100):
            assert await provider.current() is first
        clock.now += MIN_SESSION_USE_SECONDS
        assert (await provider.current()).id == "mes_2"
        assert create.calls == 2

    _run(scenario)


def test_fifty_concurrent_callers_share_one_creation() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        create.gate = asyncio.Event()
        create.entered = asyncio.Event()
        callers = [asyncio.ensure_future(provider.current()) for _ in range(50)]
        await create.entered.wait()
        assert create.calls == 1
        assert not any(c.done() for c in callers)  # all waiting on the one creation
        create.gate.set()
        sessions = await asyncio.gather(*callers)
        assert create.calls == 1
        assert {id(s) for s in sessions} == {id(sessions[0])}
        assert provider.renewals == 1

    _run(scenario)


def test_a_due_renewal_is_also_single_flight() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        await provider.current()
        clock.now += 850
        create.gate = asyncio.Event()
        create.entered = asyncio.Event()
        callers = [asyncio.ensure_future(provider.current()) for _ in range(50)]
        await create.entered.wait()  # the renewal has started
        create.gate.set()
        sessions = await asyncio.gather(*callers)
        assert create.calls == 2
        assert {s.id for s in sessions} == {"mes_2"}

    _run(scenario)


def test_a_failed_creation_reaches_every_waiter_and_the_next_call_retries() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)
    boom = ConnectionError("Stripe unreachable")

    async def scenario() -> None:
        create.gate = asyncio.Event()
        create.entered = asyncio.Event()
        create.failures.append(boom)
        callers = [asyncio.ensure_future(provider.current()) for _ in range(50)]
        await create.entered.wait()
        create.gate.set()
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert all(r is boom for r in results)
        assert create.calls == 1
        assert provider.renewals == 0
        assert provider.seconds_until_expiry() is None
        session = await provider.current()
        assert session.id == "mes_2"
        assert create.calls == 2

    _run(scenario)


def test_renew_after_another_caller_renewed_does_not_renew_twice() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        stale = await provider.current()
        fresh = await provider.renew(stale)  # Stripe said temporary_session_expired
        assert fresh.id == "mes_2"
        # A second request refused with the same stale token: no second renewal.
        assert await provider.renew(stale) is fresh
        assert create.calls == 2
        # But the fresh one, refused in its turn, is renewed.
        assert (await provider.renew(fresh)).id == "mes_3"

    _run(scenario)


def test_fifty_concurrent_renewals_of_one_stale_session_make_one_session() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        stale = await provider.current()
        create.gate = asyncio.Event()
        create.entered = asyncio.Event()
        callers = [asyncio.ensure_future(provider.renew(stale)) for _ in range(50)]
        await create.entered.wait()
        create.gate.set()
        renewed = await asyncio.gather(*callers)
        late = await provider.renew(stale)  # arrives after the renewal finished
        assert create.calls == 2
        assert {s.id for s in [*renewed, late]} == {"mes_2"}

    _run(scenario)


def test_a_cancelled_waiter_does_not_cancel_the_creation_for_the_others() -> None:
    clock = Clock()
    create = Creator(clock)
    provider = SessionProvider(create, renew_margin_seconds=60, clock=clock)

    async def scenario() -> None:
        create.gate = asyncio.Event()
        create.entered = asyncio.Event()
        first = asyncio.ensure_future(provider.current())
        second = asyncio.ensure_future(provider.current())
        await create.entered.wait()
        first.cancel()
        create.gate.set()
        assert (await second).id == "mes_1"
        assert first.cancelled()
        assert create.calls == 1

    _run(scenario)


def test_the_token_never_shows_in_repr_or_str() -> None:
    session = Session(id="mes_1", token="ek_test_SECRETTOKEN", expires_at=1.0)
    for text in (repr(session), str(session), f"{session}", f"{session!r}", f"{[session]}"):
        assert "SECRETTOKEN" not in text
        assert "mes_1" in text
    assert session.token == "ek_test_SECRETTOKEN"


def test_a_negative_margin_is_refused() -> None:
    async def create() -> Session:
        raise AssertionError("not called")

    with pytest.raises(ValueError, match="renew_margin_seconds"):
        SessionProvider(create, renew_margin_seconds=-1)
