"""Knobs: the faults and limits a test or demo dials into the emulator.

``Knobs`` is an immutable value (set at start, replaced by ``configure``); ``Faults`` holds
the counters the knobs act on (the request number for a failure schedule, the current
rate-limit window) and decides, per request in scope, whether it is delayed or refused.
Faults touch only the meter event endpoints by default (``fault_scope``), never the
``/_emulator`` inspection endpoints.
"""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

FaultScope = Literal["stream", "meter_events", "all"]
#: Which endpoints faults apply to: the stream only, the session and stream endpoints
#: (the "meter event endpoints"), or every Stripe endpoint.
FAULT_SCOPES: tuple[FaultScope, ...] = get_args(FaultScope)
#: Stripe's meter event session token lifetime (15 minutes).
DEFAULT_SESSION_TTL_SECONDS = 900.0
#: Stripe validates accepted events within seconds; the emulator's window by default.
DEFAULT_VALIDATION_DELAY_SECONDS = 1.0


class KnobError(ValueError):
    """A knob has an unknown name or an impossible value."""


@dataclass(frozen=True)
class FailureRule:
    """Requests ``first``..``last`` (1-based, counted in scope since the schedule was set)
    are answered with ``status``."""

    first: int
    last: int
    status: int = 503

    def __post_init__(self) -> None:
        if self.first < 1 or self.last < self.first:
            raise KnobError(f"failure rule {self.first}-{self.last}: need 1 <= first <= last")
        if not 400 <= self.status <= 599:
            raise KnobError(f"failure rule status must be 4xx or 5xx, not {self.status}")

    @classmethod
    def parse(cls, text: str) -> FailureRule:
        """``N:STATUS``, ``N-M:STATUS``, ``N`` or ``N-M`` (status 503 by default)."""
        span, _, status = text.strip().partition(":")
        first, _, last = span.partition("-")
        try:
            return cls(int(first), int(last or first), int(status or 503))
        except ValueError:
            raise KnobError(
                f"failure rule {text!r}: expected N-M:STATUS, e.g. 5-10:503 or 7:500"
            ) from None

    def __str__(self) -> str:
        return f"{self.first}-{self.last}:{self.status}"


def parse_schedule(value: Any) -> tuple[FailureRule, ...]:
    """A schedule from text ("1-3:503,9:500"), a list of rule strings, or rules."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise KnobError(f"failures: expected a list of N-M:STATUS rules, not {value!r}")
    rules = []
    for item in value:
        if isinstance(item, FailureRule):
            rules.append(item)
        elif isinstance(item, str):
            rules.append(FailureRule.parse(item))
        elif isinstance(item, Mapping):
            rules.append(FailureRule(**item))
        else:
            raise KnobError(f"failures: cannot read rule {item!r}")
    return tuple(rules)


@dataclass(frozen=True)
class Knobs:
    """Every knob with its default; ``Knobs().replace(**changes)`` validates changes."""

    #: Added to every request in scope: ``latency_ms`` plus uniform 0..``jitter_ms``.
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    #: Fraction (0..1) of requests in scope answered 500.
    error_rate: float = 0.0
    #: Fraction (0..1) of requests in scope answered 429 with ``Retry-After``.
    rate_limit_rate: float = 0.0
    #: The ``Retry-After`` seconds sent with injected 429s.
    retry_after_seconds: float = 1.0
    #: Requests (in scope) per second beyond which 429 + ``Retry-After`` is answered.
    requests_per_second: float | None = None
    #: Stream events per second beyond which a whole request is answered 429.
    events_per_second: float | None = None
    #: A failure schedule: requests N..M (counted from when it was set) get STATUS.
    failures: tuple[FailureRule, ...] = ()
    #: The outage switch: every request in scope is answered ``outage_status``.
    outage: bool = False
    outage_status: int = 503
    #: Lifetime of new sessions.
    session_ttl_seconds: float = DEFAULT_SESSION_TTL_SECONDS
    #: Expire every session after this many stream requests (None: never).
    session_max_requests: int | None = None
    #: Every Nth stream request, counted across all sessions, expires the session it
    #: uses (None: never): a session created a moment ago can be refused on first use.
    session_expire_every: int | None = None
    #: Create a ``sum`` meter with Stripe's default keys for an unknown event name.
    auto_meters: bool = True
    #: Seconds after which an accepted event's validation window closes and what it
    #: dropped is reported (0: at once, still only through the error reports).
    validation_delay_seconds: float = DEFAULT_VALIDATION_DELAY_SECONDS
    #: Refuse events that fail meter/customer validation with a 400 at once, instead of
    #: accepting them and dropping them later (the emulator's old strict behaviour).
    sync_validation: bool = False
    #: The customers that exist (None: every customer exists, no check).
    customers: frozenset[str] | None = None
    #: Customers whose events are accepted and then dropped as not found.
    drop_customers: frozenset[str] = frozenset()
    #: Which endpoints faults apply to (see ``FAULT_SCOPES``).
    fault_scope: FaultScope = "meter_events"
    #: Shifts the emulator's clock (sessions, timestamp window, dedupe): no sleeping in tests.
    clock_offset_seconds: float = 0.0
    #: Seed for the random faults (None: unpredictable).
    seed: int | None = None

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.latency_ms >= 0 and self.jitter_ms >= 0, "latency_ms/jitter_ms must be >= 0"),
            (0.0 <= self.error_rate <= 1.0, "error_rate must be within 0..1"),
            (0.0 <= self.rate_limit_rate <= 1.0, "rate_limit_rate must be within 0..1"),
            (self.retry_after_seconds >= 0, "retry_after_seconds must be >= 0"),
            (
                self.requests_per_second is None or self.requests_per_second > 0,
                "requests_per_second must be > 0 (or null for no limit)",
            ),
            (
                self.events_per_second is None or self.events_per_second > 0,
                "events_per_second must be > 0 (or null for no limit)",
            ),
            (500 <= self.outage_status <= 599, "outage_status must be 5xx"),
            (self.session_ttl_seconds > 0, "session_ttl_seconds must be > 0"),
            (
                self.session_max_requests is None or self.session_max_requests >= 1,
                "session_max_requests must be >= 1 (or null)",
            ),
            (
                self.session_expire_every is None or self.session_expire_every >= 1,
                "session_expire_every must be >= 1 (or null)",
            ),
            (self.validation_delay_seconds >= 0, "validation_delay_seconds must be >= 0"),
            (self.fault_scope in FAULT_SCOPES, f"fault_scope must be one of {FAULT_SCOPES}"),
        ]
        for ok, message in checks:
            if not ok:
                raise KnobError(message)

    def replace(self, **changes: Any) -> Knobs:
        """A copy with ``changes`` applied (names checked, types coerced from JSON)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise KnobError(
                f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        coerced: dict[str, Any] = {}
        for name, value in changes.items():
            coerced[name] = _coerce(name, value, getattr(self, name))
        return dataclasses.replace(self, **coerced)

    def to_json(self) -> dict[str, Any]:
        """The knobs as plain JSON values (the schedule as rule strings)."""
        data = dataclasses.asdict(self)
        data["failures"] = [str(rule) for rule in self.failures]
        data["customers"] = None if self.customers is None else sorted(self.customers)
        data["drop_customers"] = sorted(self.drop_customers)
        return data


_FLOAT_KNOBS = {
    "latency_ms",
    "jitter_ms",
    "error_rate",
    "rate_limit_rate",
    "retry_after_seconds",
    "requests_per_second",
    "events_per_second",
    "session_ttl_seconds",
    "clock_offset_seconds",
    "validation_delay_seconds",
}
_INT_KNOBS = {"outage_status", "session_max_requests", "session_expire_every", "seed"}
_BOOL_KNOBS = {"outage", "auto_meters", "sync_validation"}
_CUSTOMER_SET_KNOBS = {"customers", "drop_customers"}


def _coerce(name: str, value: Any, current: Any) -> Any:
    if name == "failures":
        return parse_schedule(value)
    if name in _CUSTOMER_SET_KNOBS:
        return parse_customers(name, value)
    if value is None:
        if name in {
            "requests_per_second",
            "events_per_second",
            "session_max_requests",
            "session_expire_every",
            "seed",
        }:
            return None
        raise KnobError(f"{name} cannot be null")
    try:
        if name in _BOOL_KNOBS:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if name in _FLOAT_KNOBS:
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if name in _INT_KNOBS:
            if isinstance(value, bool) or int(value) != value:
                raise TypeError
            return int(value)
    except (TypeError, ValueError):
        raise KnobError(f"{name}: bad value {value!r}") from None
    if name == "fault_scope" and value not in FAULT_SCOPES:
        raise KnobError(f"fault_scope must be one of {', '.join(FAULT_SCOPES)}")
    return value


def parse_customers(name: str, value: Any) -> frozenset[str] | None:
    """Customer ids from "cus_a,cus_b", a list, or None ("customers" only: no check)."""
    if value is None:
        if name == "customers":
            return None
        return frozenset()
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple | set | frozenset) or not all(
        isinstance(item, str) and item for item in value
    ):
        raise KnobError(f"{name}: expected customer ids (a list or 'cus_a,cus_b'), not {value!r}")
    return frozenset(value)


@dataclass(frozen=True)
class Refusal:
    """An injected error: the status, the ``Retry-After`` seconds if any, and why."""

    status: int
    kind: Literal["outage", "scheduled", "rate_limited", "throttled", "error"]
    retry_after: float | None = None


class Faults:
    """The knobs in force and the counters they act on. Thread-safe."""

    def __init__(self, knobs: Knobs) -> None:
        self._lock = threading.Lock()
        self._set(knobs)
        self.injected: dict[str, int] = {}

    def _set(self, knobs: Knobs) -> None:
        self.knobs = knobs
        self._random = random.Random(knobs.seed)
        self._scheduled_count = 0
        self._window = -1
        self._window_requests = 0
        self._window_events = 0

    def configure(self, **changes: Any) -> Knobs:
        """Apply knob changes. Setting ``failures`` (even to the same rules) starts its
        request count again; setting ``seed`` reseeds the random faults."""
        with self._lock:
            knobs = self.knobs.replace(**changes)
            count, old_random = self._scheduled_count, self._random
            self._set(knobs)
            if "failures" not in changes:
                self._scheduled_count = count
            if "seed" not in changes:
                self._random = old_random
            return knobs

    def reset(self, knobs: Knobs) -> None:
        """Back to ``knobs`` with every counter cleared."""
        with self._lock:
            self._set(knobs)
            self.injected = {}

    def in_scope(self, endpoint: str) -> bool:
        """Whether faults apply to ``endpoint`` (a route name) under the current knobs."""
        scope = self.knobs.fault_scope
        if scope == "all":
            return True
        if scope == "meter_events":
            return endpoint in ("meter_event_stream", "meter_event_session")
        return endpoint == "meter_event_stream"

    def delay(self) -> float:
        """Seconds to hold this request (latency plus jitter)."""
        knobs = self.knobs
        if not knobs.latency_ms and not knobs.jitter_ms:
            return 0.0
        jitter = self._random.uniform(0, knobs.jitter_ms) if knobs.jitter_ms else 0.0
        return (knobs.latency_ms + jitter) / 1000.0

    def refusal(self, now: float) -> Refusal | None:
        """The injected error for the next request in scope, or None to serve it."""
        knobs = self.knobs
        result: Refusal | None = None
        with self._lock:
            if knobs.failures:
                self._scheduled_count += 1
                number = self._scheduled_count
                for rule in knobs.failures:
                    if rule.first <= number <= rule.last:
                        retry = knobs.retry_after_seconds if rule.status == 429 else None
                        result = Refusal(rule.status, "scheduled", retry)
                        break
            if result is None and knobs.outage:
                result = Refusal(knobs.outage_status, "outage")
            if result is None and knobs.requests_per_second is not None:
                result = self._throttle(now, 1, 0, knobs.requests_per_second, None)
            if (
                result is None
                and knobs.rate_limit_rate
                and (self._random.random() < knobs.rate_limit_rate)
            ):
                result = Refusal(429, "rate_limited", knobs.retry_after_seconds)
            if result is None and knobs.error_rate and self._random.random() < knobs.error_rate:
                result = Refusal(500, "error")
            if result is not None:
                self.injected[result.kind] = self.injected.get(result.kind, 0) + 1
        return result

    def admit_events(self, now: float, count: int) -> Refusal | None:
        """The 429 for a stream request of ``count`` events over ``events_per_second``."""
        limit = self.knobs.events_per_second
        if limit is None:
            return None
        with self._lock:
            result = self._throttle(now, 0, count, None, limit)
            if result is not None:
                self.injected[result.kind] = self.injected.get(result.kind, 0) + 1
        return result

    def _throttle(
        self,
        now: float,
        requests: int,
        events: int,
        request_limit: float | None,
        event_limit: float | None,
    ) -> Refusal | None:
        # One-second fixed windows: simple, and what "N per second" means to a reader.
        window = int(now)
        if window != self._window:
            self._window = window
            self._window_requests = 0
            self._window_events = 0
        retry = max(1.0, math.ceil(window + 1 - now))
        if request_limit is not None and self._window_requests + requests > request_limit:
            return Refusal(429, "throttled", retry)
        if event_limit is not None and self._window_events + events > event_limit:
            return Refusal(429, "throttled", retry)
        self._window_requests += requests
        self._window_events += events
        return None
