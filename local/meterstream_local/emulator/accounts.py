"""Connected accounts: one ``EmulatorState`` per account, chosen by ``Stripe-Context``.

A platform bills usage on its connected accounts' meters; Stripe runs a request on a
connected account when it carries ``Stripe-Context: acct_...`` (v1 also reads the older
``Stripe-Account``). Absent, the request runs on the platform. Each account keeps its
own meters, sessions, accepted events, summaries, customers and error reports, so a test
can prove that no event reached another account.

A connected account is created by its first request and starts with the meters declared
at start-up (``--meter``), under ids of its own; meters created later through the API
belong to the account that created them. A session token belongs to the account it was
created for: used with another ``Stripe-Context`` it is refused with a 401 that is not
an expiry (``AccountSessions`` in the connector must never mix them up).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import replace

from meterstream_local.emulator.meters import Meter, meter_id
from meterstream_local.emulator.state import EmulatorState

#: What a connected account id looks like (Stripe's ``acct_`` and letters and digits).
ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]+")


class UnknownContextError(ValueError):
    """A ``Stripe-Context`` that names no account this emulator can serve."""


class Accounts:
    """The platform's state and every connected account's, created on first use."""

    def __init__(self, platform: EmulatorState, declared: Iterable[Meter] = ()) -> None:
        self.platform = platform
        self._declared = list(declared)
        self._connected: dict[str, EmulatorState] = {}
        self._lock = threading.Lock()

    def state(self, context: str | None, now: float) -> EmulatorState:
        """The state of ``context`` (None or empty: the platform); UnknownContextError when
        it is not an account id."""
        if not context:
            return self.platform
        state = self._connected.get(context)
        if state is not None:
            return state
        if not ACCOUNT_ID.fullmatch(context):
            raise UnknownContextError(
                f"Stripe-Context {context[:60]!r} is not a connected account id (acct_...)"
            )
        with self._lock:
            state = self._connected.get(context)
            if state is None:
                meters = [replace(m, id=meter_id(m.event_name, context)) for m in self._declared]
                state = EmulatorState(meters, now=now, account=context)
                self._connected[context] = state
        return state

    def connected(self) -> dict[str, EmulatorState]:
        """Every connected account seen so far."""
        with self._lock:
            return dict(self._connected)

    def owner_of(self, token: str) -> tuple[bool, str | None]:
        """(found, account) of the session ``token`` over every account."""
        if self.platform.has_session(token):
            return True, None
        for account, state in self.connected().items():
            if state.has_session(token):
                return True, account
        return False, None

    def expire_sessions(self, now: float) -> int:
        """Expire every live session of every account; how many were live."""
        return self.platform.expire_sessions(now) + sum(
            state.expire_sessions(now) for state in self.connected().values()
        )

    def reset(self, now: float) -> None:
        """Forget every connected account and what the platform accepted."""
        with self._lock:
            self._connected = {}
        self.platform.reset(now)
