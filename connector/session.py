"""Meter event sessions: one per account per process, created lazily, renewed ahead of
expiry, shared.

A session belongs to the account it was created for (the platform, or a connected account
through ``Stripe-Context``), so ``AccountSessions`` keeps one ``SessionProvider`` per
account, made on the first request for that account; each renews and single-flights on
its own, as described below for one.

Stripe's session tokens live 15 minutes. Every request of a process asks this provider for
the current session (docs/architecture.md, "Sessions"):

- The first call creates one; later calls get the same one until ``renew_margin_seconds``
  before its ``expires_at``, when the next caller starts a renewal.
- Single flight: at most one creation runs at a time; every caller that needs a session
  meanwhile awaits that same creation, so 50 concurrent requests make one HTTP call. A
  failed creation raises to every waiter, and the next call tries again (no negative cache:
  the sink's retry policy paces the attempts).
- ``renew(stale)`` is for a ``temporary_session_expired`` answer: it renews unless another
  caller already replaced ``stale``, so N requests refused with one expired token cause a
  single renewal, not N.
- The creation runs in its own task: a caller cancelled while waiting does not cancel the
  creation the others are waiting for.

Two guards keep a short or skewed session from turning every request into a creation:
the margin is capped at half the session's remaining life when it was received (an
emulator session of 10 s with the default 60 s margin is renewed after 5 s, not on every
call), and a new session is used for at least ``MIN_SESSION_USE_SECONDS`` even if the
local clock says it has expired (a clock far ahead of Stripe's); Stripe's own expiry
answer still renews it through ``renew``.

The HTTP call is injected (``create``): this module is asyncio and arithmetic only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: A new session is used at least this long before a clock-based renewal (clock skew guard).
MIN_SESSION_USE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Session:
    """A meter event session; ``token`` is a bearer secret and never shown by repr/str."""

    id: str
    token: str = field(repr=False)
    #: Epoch seconds (Stripe's ``expires_at``).
    expires_at: float
    #: The connected account it was created for (``Stripe-Context``); None: the platform.
    account: str | None = None


class SessionProvider:
    """Hands out the process's current session and renews it, one creation at a time."""

    def __init__(
        self,
        create: Callable[[], Awaitable[Session]],
        *,
        renew_margin_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if renew_margin_seconds < 0:
            raise ValueError("renew_margin_seconds must not be negative")
        self._create = create
        self._margin = renew_margin_seconds
        self._clock = clock
        self._session: Session | None = None
        self._renew_at = 0.0
        self._creating: asyncio.Task[Session] | None = None
        #: Sessions created so far (successful creations), for metrics and tests.
        self.renewals = 0

    async def current(self) -> Session:
        """The session to use now: created on first use, renewed once it is due."""
        session = self._session
        if session is not None and self._clock() < self._renew_at:
            return session
        return await self._replace()

    async def renew(self, stale: Session) -> Session:
        """After Stripe refused ``stale`` as expired: a new session, renewing at most once.

        If another caller has already replaced ``stale``, that replacement is returned
        (itself renewed first if it is due) and nothing new is created.
        """
        session = self._session
        if session is not None and session != stale:
            return await self.current()
        return await self._replace()

    def expire(self, stale: Session) -> None:
        """Stripe refused ``stale`` even fresh: the next ``current()`` makes a new session."""
        if self._session == stale:
            self._renew_at = 0.0

    def seconds_until_expiry(self) -> float | None:
        """Seconds left on the current session (negative once expired); None before the first."""
        session = self._session
        if session is None:
            return None
        return session.expires_at - self._clock()

    async def _replace(self) -> Session:
        task = self._creating
        if task is None or task.done():  # done: its callback has not cleared it yet
            task = asyncio.ensure_future(self._create_one())
            self._creating = task
            task.add_done_callback(self._created)
        # shield: one waiter's cancellation must not cancel the others' creation.
        return await asyncio.shield(task)

    async def _create_one(self) -> Session:
        session = await self._create()
        received = self._clock()
        margin = min(self._margin, max(0.0, session.expires_at - received) / 2)
        self._session = session
        self._renew_at = max(session.expires_at - margin, received + MIN_SESSION_USE_SECONDS)
        self.renewals += 1
        return session

    def _created(self, task: asyncio.Task[Session]) -> None:
        if self._creating is task:
            self._creating = None
        if not task.cancelled():
            # Mark a failure as retrieved even when every waiter was cancelled: the
            # waiters that remain get it from their own await.
            task.exception()


class AccountSessions:
    """One ``SessionProvider`` per account (None: the platform), created on first use.

    ``create(account)`` makes a session for that account. Accounts are never forgotten
    while the process runs: a provider is a few hundred bytes, and a platform bills a
    bounded set of connected accounts.
    """

    def __init__(
        self,
        create: Callable[[str | None], Awaitable[Session]] | None,
        *,
        renew_margin_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if renew_margin_seconds < 0:
            raise ValueError("renew_margin_seconds must not be negative")
        self._create = create
        self._margin = renew_margin_seconds
        self._clock = clock
        self._providers: dict[str | None, SessionProvider] = {}

    @classmethod
    def of(cls, provider: SessionProvider) -> AccountSessions:
        """The platform's provider alone (a batch for a connected account is an error)."""
        sessions = cls(None, renew_margin_seconds=0)
        sessions._providers[None] = provider
        return sessions

    def provider(self, account: str | None) -> SessionProvider:
        """The provider of ``account``'s sessions, made on first use."""
        provider = self._providers.get(account)
        if provider is None:
            create = self._create
            if create is None:
                raise RuntimeError(f"no session provider for account {account!r}")

            async def create_for_account() -> Session:
                return await create(account)

            provider = self._providers[account] = SessionProvider(
                create_for_account, renew_margin_seconds=self._margin, clock=self._clock
            )
        return provider

    @property
    def accounts(self) -> list[str | None]:
        """The accounts that have asked for a session so far."""
        return list(self._providers)

    @property
    def renewals(self) -> int:
        """Sessions created so far, over every account."""
        return sum(p.renewals for p in self._providers.values())

    def seconds_until_expiry(self) -> float | None:
        """The least time left on any account's current session; None before the first."""
        left = [
            seconds
            for p in self._providers.values()
            if (seconds := p.seconds_until_expiry()) is not None
        ]
        return min(left) if left else None
