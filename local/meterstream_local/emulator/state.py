"""What the emulator remembers: meters, sessions, accepted events, and counters.

Accepted events are not kept as objects. Two compact structures answer every question
the contract asks:

- the dedupe log: identifier -> sequence number, with columns (series, minute, value,
  timestamp) per sequence number, pruned batch by batch once 24 hours old. It answers
  "seen within the rolling 24 hours?" and lets an adjustment cancel an event.
- per (event_name, customer) series: per-minute buckets of [sum, count, last timestamp,
  last value] plus running totals. They answer event summaries by minute windows for
  ``sum``, ``count`` and ``last``, and the per-customer totals of ``/_emulator/stats``.

One lock guards it all: the server's event loop mutates, test threads read.
"""

from __future__ import annotations

import bisect
import math
import secrets
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from meterstream_local.emulator.clock import rfc3339
from meterstream_local.emulator.meters import WINDOW_SECONDS, Meter, meter_id
from meterstream_local.emulator.reports import DroppedEvent, ErrorReports, ThinEvent
from meterstream_local.emulator.validation import CheckedEvent

#: Stripe deduplicates identifiers over a rolling 24 hours.
DEDUPE_WINDOW_SECONDS = 86_400.0
#: Events can be canceled within 24 hours of receipt.
CANCEL_WINDOW_SECONDS = 86_400.0
#: Sessions that expired longer ago than this are forgotten (their tokens then read as
#: unknown, which the stream answers exactly like expired).
SESSION_RETENTION_SECONDS = 3_600.0
#: Prune forgotten sessions once this many exist (keeps session creation O(1) amortised).
SESSION_PRUNE_THRESHOLD = 1_000
#: Upper bounds (seconds) of the freshness histogram's cumulative buckets: fine below a
#: quarter second, where a connector's end-to-end latency (linger + round trips) lies.
FRESHNESS_BUCKETS_SECONDS = (
    *(0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2),
    *(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 3600, 86_400),
)
#: Compact the dedupe log's columns once this many pruned slots sit at their front.
LOG_COMPACT_MIN = 65_536

SessionCheck = Literal["ok", "expired"]


@dataclass
class MeterEventSession:
    """One meter event session (the token authenticates stream requests)."""

    id: str
    token: str
    created: float
    expires_at: float
    livemode: bool
    uses: int = 0

    def to_stripe(self) -> dict[str, Any]:
        """Stripe's ``v2.billing.meter_event_session`` object."""
        return {
            "id": self.id,
            "object": "v2.billing.meter_event_session",
            "authentication_token": self.token,
            "created": rfc3339(self.created),
            "expires_at": rfc3339(self.expires_at),
            "livemode": self.livemode,
        }


class Series:
    """Accepted usage of one customer on one meter, in per-minute buckets.

    Totals are not kept per event: ``totals()`` adds the buckets up when asked, which is
    rare, while every accepted event would pay for running totals.
    """

    __slots__ = ("customer", "event_name", "latest", "minutes", "window_seconds")

    def __init__(self, event_name: str, customer: str, window_seconds: int = 0) -> None:
        self.event_name = event_name
        self.customer = customer
        #: A meter with an ``event_time_window``: its length in seconds (0: none), and the
        #: one event kept per window: window number -> (timestamp, value).
        self.window_seconds = window_seconds
        self.latest: dict[int, tuple[float, int]] = {}
        #: minute (epoch // 60) -> [sum, count, last timestamp, last value]
        self.minutes: dict[int, list[Any]] = {}

    def keep_latest(self, stamp: float, value: int) -> None:
        """Keep only the most recent event of its window (by timestamp; ties: this one,
        the later received), as Stripe does for meters with an ``event_time_window``."""
        key = int(stamp // self.window_seconds)
        current = self.latest.get(key)
        if current is not None:
            if stamp < current[0]:
                return  # an older event than the one kept: it changes nothing
            self._remove(*current)
        self.latest[key] = (stamp, value)
        minute = int(stamp // 60)
        bucket = self.minutes.get(minute)
        if bucket is None:
            self.minutes[minute] = [value, 1, stamp, value]
        else:  # cannot happen (one event per window), kept for safety
            bucket[0] += value
            bucket[1] += 1
            if stamp >= bucket[2]:
                bucket[2], bucket[3] = stamp, value

    def cancel_latest(self, stamp: float, value: int) -> None:
        """Cancel an event of a windowed meter: if it is the one kept, its window empties."""
        key = int(stamp // self.window_seconds)
        if self.latest.get(key) == (stamp, value):
            del self.latest[key]
            self._remove(stamp, value)

    def _remove(self, stamp: float, value: int) -> None:
        minute = int(stamp // 60)
        bucket = self.minutes[minute]
        bucket[0] -= value
        bucket[1] -= 1
        if bucket[1] <= 0:
            del self.minutes[minute]

    def total(self) -> dict[str, int]:
        """{"sum", "count", "last"} over every bucket."""
        total = count = 0
        last_ts, last_value = float("-inf"), 0
        for bucket in self.minutes.values():
            total += bucket[0]
            count += bucket[1]
            if bucket[2] >= last_ts:
                last_ts, last_value = bucket[2], bucket[3]
        return {"sum": total, "count": count, "last": last_value}


class EmulatorState:
    """Everything accepted so far; every public method is thread-safe."""

    def __init__(
        self, meters: Iterable[Meter] = (), *, now: float = 0.0, account: str | None = None
    ) -> None:
        self._lock = threading.Lock()
        #: The connected account this state belongs to (None: the platform).
        self.account = account
        self._declared = list(meters)
        self._clear(now)

    @property
    def declared(self) -> list[Meter]:
        """The meters declared at start-up (a reset brings them back)."""
        return list(self._declared)

    # -- lifecycle -----------------------------------------------------------------------

    def _clear(self, now: float) -> None:
        self.meters: dict[str, Meter] = {}
        for meter in self._declared:
            self.meters[meter.event_name] = meter.stamped(int(now))
        self._sessions: dict[str, MeterEventSession] = {}
        self._prune_sessions_at = SESSION_PRUNE_THRESHOLD
        self._series: dict[str, dict[str, Series]] = {}
        # The dedupe log (see the module docstring). ``_base`` is the sequence number of
        # column slot 0; ``_batches`` holds (accepted_at, end sequence) per request.
        self._seen: dict[str, int] = {}
        self._ids: list[str] = []
        self._log_series: list[Series | None] = []
        self._log_values = array("q")
        self._log_stamps = array("d")
        self._base = 0
        self._start = 0  # first live slot
        self._batches: deque[tuple[float, int]] = deque()
        self.events_accepted = 0
        self.reports = ErrorReports(self.account)
        self._clear_freshness(now)
        #: Customers created with ``POST /v1/customers``: id -> Stripe's customer object.
        self.customer_objects: dict[str, dict[str, Any]] = {}
        #: Customers created in a connected account (None until the first: any is known).
        #: The platform's live in the ``customers`` knob.
        self.customer_ids: frozenset[str] | None = None
        #: Monotonic times of the first and last accepted event (benchmarks time the span).
        self._first_accept: float | None = None
        self._last_accept: float | None = None
        self.duplicates = 0
        self.events_canceled = 0
        self.events_rejected: dict[str, int] = {}
        self.requests_rejected: dict[str, int] = {}
        self.sessions_created = 0
        self.expired_responses = 0
        #: Stream requests seen with a session token (the ``session_expire_every`` count).
        self.stream_requests_seen = 0
        self.requests_by_status: dict[int, int] = {}
        self.requests_by_endpoint: dict[str, int] = {}

    def _clear_freshness(self, now: float) -> None:
        # Acceptance stamps: per accepted event its lag (accepted wall time minus event
        # timestamp); per request that accepted any, its monotonic and wall acceptance
        # time and the number of lags recorded through it (event i belongs to the first
        # request whose count exceeds i).
        self._lags = array("d")
        self._accepted_monotonic = array("d")
        self._accepted_wall = array("d")
        self._accepted_through = array("q")
        self._freshness_since = now

    def reset_freshness(self, now: float) -> None:
        """Start the freshness measurement again (forget every acceptance stamp)."""
        with self._lock:
            self._clear_freshness(now)

    def freshness(self) -> dict[str, Any]:
        """The distribution of (accepted wall time - event timestamp) since the last reset:
        percentiles, max and a cumulative histogram, in seconds."""
        with self._lock:
            lags = sorted(self._lags)
            first = self._accepted_monotonic[0] if self._accepted_monotonic else None
            last = self._accepted_monotonic[-1] if self._accepted_monotonic else None
            first_wall = self._accepted_wall[0] if self._accepted_wall else None
            last_wall = self._accepted_wall[-1] if self._accepted_wall else None
            requests = len(self._accepted_monotonic)
            since = self._freshness_since
        count = len(lags)

        def rank(fraction: float) -> float | None:
            if not lags:
                return None
            return lags[min(count - 1, max(0, math.ceil(fraction * count) - 1))]

        histogram: list[dict[str, Any]] = [
            {"le": bound, "count": bisect.bisect_right(lags, bound)}
            for bound in FRESHNESS_BUCKETS_SECONDS
        ]
        histogram.append({"le": "+Inf", "count": count})
        return {
            "since": rfc3339(since),
            "events": count,
            "requests": requests,
            "seconds": {
                "p50": rank(0.50),
                "p90": rank(0.90),
                "p99": rank(0.99),
                "max": lags[-1] if lags else None,
                "min": lags[0] if lags else None,
                "mean": sum(lags) / count if lags else None,
            },
            "histogram": histogram,
            "accepted_monotonic": {"first": first, "last": last},
            "accepted_wall": {
                "first": rfc3339(first_wall) if first_wall is not None else None,
                "last": rfc3339(last_wall) if last_wall is not None else None,
            },
        }

    def reset(self, now: float) -> None:
        """Forget everything accepted; keep the declared meters (new creation time)."""
        with self._lock:
            self._clear(now)

    # -- meters ----------------------------------------------------------------------------

    def add_meter(self, meter: Meter, now: float) -> Meter:
        """Register a meter; raises ``ValueError`` if its event name already has one."""
        with self._lock:
            if meter.event_name in self.meters:
                raise ValueError(f"a meter for event_name {meter.event_name!r} already exists")
            meter = self._own(meter).stamped(int(now))
            self.meters[meter.event_name] = meter
            return meter

    def _own(self, meter: Meter) -> Meter:
        """``meter`` as an object of this account: in a connected account, an id of its own."""
        if self.account is None:
            return meter
        return replace(meter, id=meter_id(meter.event_name, self.account))

    def meter_list(self) -> list[Meter]:
        """A snapshot of every meter."""
        with self._lock:
            return list(self.meters.values())

    def meter_by_id(self, meter_id: str) -> Meter | None:
        """The meter with this id, or None."""
        for meter in list(self.meters.values()):
            if meter.id == meter_id:
                return meter
        return None

    def set_meter_active(self, meter_id: str, active: bool, now: float) -> Meter | None:
        """Deactivate or reactivate a meter (inactive meters refuse events)."""
        with self._lock:
            meter = self.meter_by_id(meter_id)
            if meter is None:
                return None
            meter = replace(meter, active=active, updated=int(now))
            self.meters[meter.event_name] = meter
            return meter

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, *, livemode: bool, ttl: float, now: float) -> MeterEventSession:
        """A new session living ``ttl`` seconds."""
        mode = "live" if livemode else "test"
        session = MeterEventSession(
            id=f"mes_{mode}_{secrets.token_hex(12)}",
            token=f"mestok_{mode}_{secrets.token_urlsafe(24)}",
            created=now,
            expires_at=now + ttl,
            livemode=livemode,
        )
        with self._lock:
            if len(self._sessions) >= self._prune_sessions_at:
                cutoff = now - SESSION_RETENTION_SECONDS
                self._sessions = {
                    token: s for token, s in self._sessions.items() if s.expires_at > cutoff
                }
                # Doubling keeps pruning amortised O(1) even when every session is recent.
                self._prune_sessions_at = max(SESSION_PRUNE_THRESHOLD, 2 * len(self._sessions))
            self._sessions[session.token] = session
            self.sessions_created += 1
        return session

    def use_session(
        self,
        token: str,
        *,
        now: float,
        max_requests: int | None,
        expire_every: int | None = None,
    ) -> SessionCheck:
        """Count one stream request on the session of ``token``; "expired" if it may not."""
        self.stream_requests_seen += 1
        session = self._sessions.get(token)
        if session is None or session.expires_at <= now:
            self.expired_responses += 1
            return "expired"
        expire_now = expire_every is not None and self.stream_requests_seen % expire_every == 0
        if expire_now or (max_requests is not None and session.uses >= max_requests):
            session.expires_at = now
            self.expired_responses += 1
            return "expired"
        session.uses += 1
        return "ok"

    def has_session(self, token: str) -> bool:
        """Whether ``token`` is a session of this account (live or expired)."""
        return token in self._sessions

    def expire_sessions(self, now: float) -> int:
        """Expire every live session now; returns how many were live."""
        with self._lock:
            live = [s for s in self._sessions.values() if s.expires_at > now]
            for session in live:
                session.expires_at = now
            return len(live)

    def active_sessions(self, now: float) -> int:
        """How many sessions are still valid."""
        with self._lock:
            return sum(1 for s in self._sessions.values() if s.expires_at > now)

    # -- events ------------------------------------------------------------------------------

    def accept(
        self,
        events: list[CheckedEvent],
        now: float,
        dropped: Sequence[DroppedEvent] = (),
        *,
        validation_delay: float = 0.0,
    ) -> tuple[int, int]:
        """Record checked events, and queue the dropped ones for an error report once
        ``validation_delay`` has passed; returns (newly accepted, duplicates)."""
        accepted = duplicates = 0
        with self._lock:
            self._prune(now)
            if dropped:
                self._queue_dropped(dropped, now, validation_delay)
            meters = self.meters
            series_by_meter = self._series
            seen = self._seen
            ids = self._ids
            logged_before = len(ids)
            seq = self._base + logged_before
            lags_append = self._lags.append
            ids_append = ids.append
            log_series_append = self._log_series.append
            values_append = self._log_values.append
            stamps_append = self._log_stamps.append
            # The previous event's series: consecutive events often share name and customer.
            last_name = last_customer = None
            by_customer: dict[str, Series] = {}
            series: Series | None = None
            for name, customer, value, stamp, identifier in events:
                if identifier is not None:
                    if identifier in seen:
                        duplicates += 1
                        continue
                    seen[identifier] = seq
                    seq += 1
                if name != last_name:
                    found = series_by_meter.get(name)
                    if found is None:
                        if name not in meters:  # auto_meters: validation let it through
                            meters[name] = self._own(Meter(event_name=name)).stamped(int(now))
                        found = series_by_meter[name] = {}
                    by_customer, last_name, last_customer = found, name, None
                if customer != last_customer or series is None:
                    series = by_customer.get(customer)
                    if series is None:
                        window = meters[name].event_time_window if name in meters else None
                        series = by_customer[customer] = Series(
                            name, customer, WINDOW_SECONDS.get(window or "", 0)
                        )
                    last_customer = customer
                if series.window_seconds:
                    series.keep_latest(stamp, value)
                    if identifier is not None:
                        ids_append(identifier)
                        log_series_append(series)
                        values_append(value)
                        stamps_append(stamp)
                    lags_append(now - stamp)
                    accepted += 1
                    continue
                minute = int(stamp // 60)
                bucket = series.minutes.get(minute)
                if bucket is None:
                    series.minutes[minute] = [value, 1, stamp, value]
                else:
                    bucket[0] += value
                    bucket[1] += 1
                    if stamp >= bucket[2]:
                        bucket[2] = stamp
                        bucket[3] = value
                if identifier is not None:
                    ids_append(identifier)
                    log_series_append(series)
                    values_append(value)
                    stamps_append(stamp)
                lags_append(now - stamp)
                accepted += 1
            if len(ids) != logged_before:
                self._batches.append((now, self._base + len(ids)))
            self.events_accepted += accepted
            if accepted:
                self._last_accept = time.monotonic()
                if self._first_accept is None:
                    self._first_accept = self._last_accept
                self._accepted_monotonic.append(self._last_accept)
                self._accepted_wall.append(now)
                self._accepted_through.append(len(self._lags))
            self.duplicates += duplicates
        return accepted, duplicates

    def _queue_dropped(self, dropped: Sequence[DroppedEvent], now: float, delay: float) -> None:
        meters = self.meters
        for _, code, _, _, name, _ in dropped:
            if code != "no_meter" and name not in meters:  # auto_meters let the name through
                meters[name] = self._own(Meter(event_name=name)).stamped(int(now))
        ids = {name: (meters[name].id if name in meters else None) for *_, name, _ in dropped}
        self.reports.add(dropped, ids, now=now, delay=delay)

    def _prune(self, now: float) -> None:
        """Drop identifiers accepted more than 24 hours ago (called with the lock held)."""
        batches = self._batches
        cutoff = now - DEDUPE_WINDOW_SECONDS
        if not batches or batches[0][0] > cutoff:
            return
        seen = self._seen
        ids = self._ids
        while batches and batches[0][0] <= cutoff:
            _, end = batches.popleft()
            stop = end - self._base
            for slot in range(self._start, stop):
                identifier = ids[slot]
                if seen.get(identifier) == self._base + slot:
                    del seen[identifier]
                self._log_series[slot] = None
            self._start = max(self._start, stop)
        if self._start >= LOG_COMPACT_MIN and self._start * 2 >= len(ids):
            cut = self._start
            del ids[:cut]
            del self._log_series[:cut]
            del self._log_values[:cut]
            del self._log_stamps[:cut]
            self._base += cut
            self._start = 0

    def seen(self, identifier: str) -> bool:
        """Whether ``identifier`` was accepted within the dedupe window."""
        with self._lock:
            return identifier in self._seen

    def cancel(self, event_name: str, identifier: str, now: float) -> str | None:
        """Cancel one event; returns None, or an error code when it cannot be canceled."""
        with self._lock:
            self._prune(now)
            seq = self._seen.get(identifier)
            if seq is None:
                return "resource_missing"
            slot = seq - self._base
            series = self._log_series[slot]
            if series is None:
                return "already_canceled"
            accepted_at = next((t for t, end in self._batches if seq < end), now)
            if accepted_at < now - CANCEL_WINDOW_SECONDS:
                return "resource_missing"
            if series.event_name != event_name:
                return "event_name_mismatch"
            self._log_series[slot] = None
            stamp = self._log_stamps[slot]
            value = self._log_values[slot]
            if series.window_seconds:
                series.cancel_latest(stamp, value)
                self.events_canceled += 1
                return None
            minute = int(stamp // 60)
            bucket = series.minutes[minute]
            bucket[0] -= value
            bucket[1] -= 1
            if bucket[1] == 0:
                del series.minutes[minute]
            else:
                # ``last`` of the bucket: recompute from the live events of that minute.
                self._recompute_last(series, minute, bucket)
            self.events_canceled += 1
            return None

    def _recompute_last(self, series: Series, minute: int, bucket: list[Any]) -> None:
        best_ts, best_value = float("-inf"), bucket[3]
        stamps = self._log_stamps
        for slot in range(self._start, len(self._ids)):
            if (
                self._log_series[slot] is series
                and int(stamps[slot] // 60) == minute
                and stamps[slot] >= best_ts
            ):
                best_ts, best_value = stamps[slot], self._log_values[slot]
        if best_ts != float("-inf"):
            bucket[2], bucket[3] = best_ts, best_value

    # -- questions ---------------------------------------------------------------------------

    def summaries(
        self, event_name: str, customer: str, windows: Iterable[tuple[int, int]], formula: str
    ) -> list[tuple[int, int, int, bool]]:
        """(start, end, aggregated value, has events) for each [start, end) window."""
        with self._lock:
            series = self._series.get(event_name, {}).get(customer)
            buckets = dict(series.minutes) if series is not None else {}
            buckets = {m: list(b) for m, b in buckets.items()}
        minutes = sorted(buckets)
        results = []
        for start, end in windows:
            first, stop = start // 60, end // 60
            total = count = 0
            last_ts, last_value = float("-inf"), 0
            for minute in minutes:
                if minute < first:
                    continue
                if minute >= stop:
                    break
                bucket = buckets[minute]
                total += bucket[0]
                count += bucket[1]
                if bucket[2] >= last_ts:
                    last_ts, last_value = bucket[2], bucket[3]
            value = {"sum": total, "count": count}.get(formula, last_value)
            results.append((start, end, value, count > 0))
        return results

    def totals(self, event_name: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """event_name -> customer -> {"sum", "count", "last"} of accepted usage."""
        with self._lock:
            return {
                name: {
                    customer: total
                    for customer, s in by_customer.items()
                    if (total := s.total())["count"]
                }
                for name, by_customer in self._series.items()
                if event_name is None or name == event_name
            }

    def thin_events(self, now: float, **filters: Any) -> list[ThinEvent]:
        """Error reports whose validation window has closed, newest first (see
        ``ErrorReports.select`` for the filters)."""
        with self._lock:
            self.reports.flush(now)
            return self.reports.select(now, **filters)

    def thin_event(self, event_id: str, now: float) -> ThinEvent | None:
        """One reported thin event by id, or None."""
        with self._lock:
            self.reports.flush(now)
            return self.reports.by_id.get(event_id)

    def dropped(self, now: float) -> dict[str, int]:
        """Dropped events reported so far, by code."""
        with self._lock:
            self.reports.flush(now)
            return dict(sorted(self.reports.dropped_by_code.items()))

    def record_request(self, endpoint: str, status: int) -> None:
        """Count one answered Stripe request (the loop thread only; reads copy the dicts)."""
        self.requests_by_status[status] = self.requests_by_status.get(status, 0) + 1
        self.requests_by_endpoint[endpoint] = self.requests_by_endpoint.get(endpoint, 0) + 1

    def record_rejection(self, codes: dict[str, int], request_code: str) -> None:
        """Count one 400: each invalid event by code, and the request by its code."""
        for code, count in codes.items():
            self.events_rejected[code] = self.events_rejected.get(code, 0) + count
        self.requests_rejected[request_code] = self.requests_rejected.get(request_code, 0) + 1

    def stats(self, now: float) -> dict[str, Any]:
        """The inspection report (``GET /_emulator/stats``)."""
        by_status = self.requests_by_status.copy()
        by_endpoint = self.requests_by_endpoint.copy()
        rejected_events = self.events_rejected.copy()
        rejected_requests = self.requests_rejected.copy()
        totals = self.totals()
        dropped = self.dropped(now)
        with self._lock:
            meters = [m.to_stripe() for m in self.meters.values()]
            tracked = len(self._seen)
            pending = len(self.reports.pending)
            reports = len(self.reports.events)
        return {
            "requests": {
                "total": sum(by_status.values()),
                "by_status": {str(k): v for k, v in sorted(by_status.items())},
                "by_endpoint": dict(sorted(by_endpoint.items())),
            },
            "events": {
                "accepted": self.events_accepted,
                "duplicates": self.duplicates,
                "canceled": self.events_canceled,
                "rejected": sum(rejected_events.values()),
                "rejected_by_code": dict(sorted(rejected_events.items())),
                "rejected_requests_by_code": dict(sorted(rejected_requests.items())),
                # Accepted with a 200, then dropped by validation (reported as thin events).
                "dropped": sum(dropped.values()),
                "dropped_by_code": dropped,
                "awaiting_validation": pending,
                "error_reports": reports,
                "identifiers_tracked": tracked,
                # From the first accepted event to the last: a rate without start-up time.
                "accepting_seconds": (
                    self._last_accept - self._first_accept
                    if self._first_accept is not None and self._last_accept is not None
                    else 0.0
                ),
            },
            "sessions": {
                "created": self.sessions_created,
                "active": self.active_sessions(now),
                "expired_responses": self.expired_responses,
            },
            "meters": {
                meter["event_name"]: {
                    "id": meter["id"],
                    "formula": meter["default_aggregation"]["formula"],
                    "status": meter["status"],
                    "customers": totals.get(meter["event_name"], {}),
                }
                for meter in meters
            },
        }
