"""The account's billing meters, and whether an event would reach one.

Stripe answers 200 to a meter event whose event name has no active meter, or whose payload
lacks the meter's customer or value key, and then drops it without a word (see
``docs/stripe.md``). So the connector checks what it sends against the meters list:

- ``MeterCatalog.problems(mapping)`` at start: every event name the mapping produces
  without reading a record (``mapping.constant_event_name``, ``mapping.fan_out[].event_name``)
  must have an active meter reading the payload keys the config sends. One line per
  problem, naming the config key to change and what to set it to.
- ``MeterCatalog.check(event_name, customer_key, value_key)`` per event whose name comes
  from the record: ``no_active_meter`` or ``meter_payload_mismatch`` (dead-letter reasons).

The list is refreshed when it is older than ``meters.refresh_seconds``, and early when a
name is not found (at most once per ``refresh_seconds``: a stream of records for a meter
that does not exist costs one listing a period, not one per record). A refresh that fails
(Stripe unreachable) keeps the old list; a refusal seen while ``wants_refresh`` is true is
provisional, and the caller refreshes before acting on it (see ``check``).

``preflight(config)`` is the start-up step of ``meterstream run``; ``check-config --online``
runs the same checks and prints the meters.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from pydantic import SecretStr

from connector import metrics
from connector.config import MappingConfig, MeterstreamConfig, StripeConfig
from connector.errors import (
    AuthenticationError,
    BackoffError,
    ConfigError,
    DeadLetterReason,
    StripeError,
)
from connector.stripe_v1 import StripeV1Client, retry_outages

log = logging.getLogger("meterstream.meters")

METERS_PATH = "/v1/billing/meters"
Formula = Literal["sum", "count", "last"]
FORMULAS: tuple[Formula, ...] = ("sum", "count", "last")
#: Stripe's payload keys when a meter does not name its own.
DEFAULT_CUSTOMER_KEY = "stripe_customer_id"
DEFAULT_VALUE_KEY = "value"


@dataclass(frozen=True, slots=True)
class Meter:
    """One billing meter, as much of it as sending and reconciling need."""

    id: str
    event_name: str
    status: str  # "active" or "inactive"
    formula: Formula
    customer_payload_key: str = DEFAULT_CUSTOMER_KEY
    value_payload_key: str = DEFAULT_VALUE_KEY
    #: "hour", "day" or None: Stripe keeps only the latest event per customer and window.
    event_time_window: str | None = None

    @property
    def active(self) -> bool:
        """Whether Stripe bills events for this meter."""
        return self.status == "active"

    @classmethod
    def from_stripe(cls, data: dict[str, Any]) -> Meter:
        """A meter from Stripe's ``billing.meter`` object; ValueError if it is not one."""
        meter_id = data.get("id")
        event_name = data.get("event_name")
        if not isinstance(meter_id, str) or not isinstance(event_name, str):
            raise ValueError("a billing.meter without id or event_name")
        formula = _nested(data, "default_aggregation", "formula") or "sum"
        if formula not in FORMULAS:
            raise ValueError(f"meter {meter_id} has an unknown formula {formula!r}")
        status = data.get("status")
        window = data.get("event_time_window")
        return cls(
            id=meter_id,
            event_name=event_name,
            status=status if isinstance(status, str) else "active",
            formula=formula,
            customer_payload_key=_nested(data, "customer_mapping", "event_payload_key")
            or DEFAULT_CUSTOMER_KEY,
            value_payload_key=_nested(data, "value_settings", "event_payload_key")
            or DEFAULT_VALUE_KEY,
            event_time_window=window if isinstance(window, str) else None,
        )


def _nested(data: dict[str, Any], outer: str, inner: str) -> Any:
    value = data.get(outer)
    found = value.get(inner) if isinstance(value, dict) else None
    return found if isinstance(found, str) and found else None


async def list_meters(
    config: StripeConfig,
    api_key: SecretStr,
    *,
    client: StripeV1Client | None = None,
    account: str | None = None,
) -> list[Meter]:
    """Every meter of the account (the platform, or the connected ``account``), active and
    inactive, every page.

    Raises BackoffError (an outage: retry later) or AuthenticationError (the key, its
    permissions or ``stripe.api_base`` are wrong).
    """
    if client is None:
        async with StripeV1Client(config, api_key, max_connections=1) as own:
            return await list_meters(config, api_key, client=own, account=account)
    meters: list[Meter] = []
    doing = f"listing billing meters of {account}" if account else "listing billing meters"
    async for item in client.list_all(METERS_PATH, {}, doing, account=account):
        try:
            meters.append(Meter.from_stripe(item))
        except ValueError as exc:
            log.warning("ignoring a meter Stripe listed: %s", exc)
    return meters


class MeterProblem(NamedTuple):
    """Why an event would be dropped by Stripe: a dead-letter reason and a human message."""

    reason: DeadLetterReason
    message: str


@dataclass(frozen=True, slots=True)
class _Fixed:
    """An event name the mapping produces without reading a record, and where it is set."""

    event_name: str
    name_key: str  # the config key holding the event name
    customer_key: str
    customer_key_setting: str  # the config key to set for a different customer key
    value_key: str
    value_key_setting: str


def _fixed_event_names(mapping: MappingConfig) -> list[_Fixed]:
    if mapping.fan_out:  # fan-out replaces the event name (the Mapper ignores the others)
        return [
            _Fixed(
                event_name=entry.event_name,
                name_key=f"mapping.fan_out.{index}.event_name",
                customer_key=entry.customer_payload_key or mapping.customer_payload_key,
                customer_key_setting=f"mapping.fan_out.{index}.customer_payload_key",
                value_key=entry.value_payload_key or mapping.value_payload_key,
                value_key_setting=f"mapping.fan_out.{index}.value_payload_key",
            )
            for index, entry in enumerate(mapping.fan_out)
        ]
    if mapping.constant_event_name:
        return [
            _Fixed(
                event_name=mapping.constant_event_name,
                name_key="mapping.constant_event_name",
                customer_key=mapping.customer_payload_key,
                customer_key_setting="mapping.customer_payload_key",
                value_key=mapping.value_payload_key,
                value_key_setting="mapping.value_payload_key",
            )
        ]
    return []


class MeterCatalog:
    """The latest meters list, keyed by event name, and the checks made against it.

    ``fetch`` lists the meters again (None: the list never changes, e.g. in tests);
    ``enabled=False`` (``meters.preflight: false``) trusts the mapping: no problem is ever
    reported and nothing is fetched.
    """

    def __init__(
        self,
        meters: Iterable[Meter],
        *,
        fetch: Callable[[], Awaitable[list[Meter]]] | None = None,
        refresh_seconds: float = 60.0,
        enabled: bool = True,
        account: str | None = None,
        listed: bool = True,
        allow_windowed: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = enabled
        #: The connected account whose meters these are; None: the platform.
        self.account = account
        #: ``meters.allow_windowed``: records carry running totals, send windowed meters.
        self.allow_windowed = allow_windowed
        self._fetch = fetch
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._by_name: dict[str, Meter] = {}
        self._verdicts: dict[tuple[str, str, str], MeterProblem | None] = {}
        # ``listed=False``: ``meters`` is not a listing yet (a connected account seen for
        # the first time), so the list is due at once and nothing is refused before it.
        self._fetched_at = clock() if listed else float("-inf")
        self._early_at = float("-inf")
        self._early_wanted = False
        #: Why the last refresh failed (None after a success), for logs and /readyz.
        self.problem: str | None = None
        #: A connected account's listing refused with a 4xx that is neither about the key
        #: nor an outage (a deleted or unusable account): its events cannot be billed.
        self.refused: StripeError | None = None
        #: (event name, customer key, value key) checked and found sendable with the current
        #: list; emptied in place when the list changes, so a holder of it (the meter gate's
        #: hot path) never sees a stale verdict.
        self.sendable: set[tuple[str, str, str]] = set()
        self._replace(meters)

    # -- the list ---------------------------------------------------------------------------

    @property
    def meters(self) -> list[Meter]:
        """Every meter, active first, then by event name."""
        return sorted(self._by_name.values(), key=lambda m: (not m.active, m.event_name))

    def event_name_of(self, meter_id: str) -> str | None:
        """The event name of the meter ``meter_id``, if it is in the list."""
        return next((m.event_name for m in self._by_name.values() if m.id == meter_id), None)

    def get(self, event_name: str) -> Meter | None:
        """The meter of ``event_name`` (active or not), or None."""
        return self._by_name.get(event_name)

    def _replace(self, meters: Iterable[Meter]) -> None:
        by_name: dict[str, Meter] = {}
        for meter in meters:
            # An event name belongs to one meter; if Stripe ever listed two, the active wins.
            if meter.event_name not in by_name or meter.active:
                by_name[meter.event_name] = meter
        self._by_name = by_name
        self._verdicts = {}
        self.sendable.clear()
        if self.enabled and self.account is None:  # the gauge is the platform's
            statuses = Counter(m.status for m in by_name.values())
            for status in ("active", "inactive"):
                metrics.METERS.labels(status).set(statuses.get(status, 0))

    @property
    def wants_refresh(self) -> bool:
        """Whether the list is due: older than ``refresh_seconds``, or a name was not found
        and no early refresh happened in the last ``refresh_seconds``."""
        if not self.enabled or self._fetch is None:
            return False
        return self._early_wanted or self._clock() - self._fetched_at >= self._refresh_seconds

    async def refresh(self) -> bool:
        """List the meters again; True on success. On failure the old list stays (False).

        A failure is never a verdict on events: while it lasts ``wants_refresh`` stays true,
        so a refusal is still provisional and the caller holds the record, as in an outage.
        """
        if self._fetch is None or not self.enabled:
            return True
        early = self._early_wanted
        try:
            meters = await self._fetch()
        except StripeError as exc:
            refused = self.account is not None and not isinstance(
                exc, BackoffError | AuthenticationError
            )
            self.refused = exc if refused else None
            self.problem = f"cannot list billing meters: {exc}"
            log.warning("%s (keeping the list from before)", self.problem)
            return False
        now = self._clock()
        self._fetched_at = now
        if early:
            self._early_at = now
        self._early_wanted = False
        self.problem = None
        self.refused = None
        self._replace(meters)
        return True

    # -- the checks -------------------------------------------------------------------------

    def check(self, event_name: str, customer_key: str, value_key: str) -> MeterProblem | None:
        """Why Stripe would drop an event of ``event_name`` with these payload keys, or None.

        For event names read from records. A name without an active meter asks for an early
        refresh (at most once per ``refresh_seconds``): when a problem comes back while
        ``wants_refresh`` is true, ``await refresh()`` and check again before dead-lettering;
        if the refresh fails, hold the record (Stripe is unreachable, the list may be stale).
        """
        if not self.enabled:
            return None
        key = (event_name, customer_key, value_key)
        try:
            verdict = self._verdicts[key]
        except KeyError:
            verdict = self._verdicts[key] = self._judge(event_name, customer_key, value_key)
        if verdict is None:
            self.sendable.add(key)
            return None
        if (
            verdict.reason == "no_active_meter"
            and self._fetch is not None
            and self._clock() - self._early_at >= self._refresh_seconds
        ):
            self._early_wanted = True
        if not self.wants_refresh:  # final: counted once, not again after a refresh
            metrics.METER_PREFLIGHT_FAILURES.labels(verdict.reason).inc()
        return verdict

    def _judge(self, event_name: str, customer_key: str, value_key: str) -> MeterProblem | None:
        meter = self._by_name.get(event_name)
        if meter is None:
            where = f" in connected account {self.account}" if self.account else ""
            return MeterProblem(
                "no_active_meter",
                f"no meter{where} has event name {event_name!r}: Stripe would drop the event "
                "(create the meter in the Dashboard, then replay the dead letter)",
            )
        if not meter.active:
            return MeterProblem(
                "no_active_meter",
                f"meter {meter.id} for event name {event_name!r} is inactive: Stripe would "
                "drop the event (reactivate the meter in the Dashboard, then replay)",
            )
        if meter.customer_payload_key != customer_key:
            return MeterProblem(
                "meter_payload_mismatch",
                f"meter {meter.id} for event name {event_name!r} expects the customer under "
                f"{meter.customer_payload_key!r}, the config sends it under {customer_key!r} "
                f"(set mapping.customer_payload_key to {meter.customer_payload_key!r})",
            )
        if meter.formula != "count" and meter.value_payload_key != value_key:
            return MeterProblem(
                "meter_payload_mismatch",
                f"meter {meter.id} for event name {event_name!r} expects the value under "
                f"{meter.value_payload_key!r}, the config sends it under {value_key!r} "
                f"(set mapping.value_payload_key to {meter.value_payload_key!r})",
            )
        if meter.event_time_window and not self.allow_windowed:
            return MeterProblem("windowed_meter", _windowed_message(meter))
        return None

    def problems(self, mapping: MappingConfig) -> list[str]:
        """The start-time preflight: one line per problem, each naming the fix."""
        return [f"{key}: {message}" for key, message in self.problem_pairs(mapping)]

    def problem_pairs(self, mapping: MappingConfig) -> list[tuple[str, str]]:
        """``problems`` as (config key, message) pairs, the shape of ``ConfigError``."""
        if not self.enabled:
            return []
        found: list[tuple[str, str, DeadLetterReason]] = []
        for fixed in _fixed_event_names(mapping):
            found.extend(self._fixed_problems(fixed))
        for _key, _message, reason in found:
            metrics.METER_PREFLIGHT_FAILURES.labels(reason).inc()
        return [(key, message) for key, message, _reason in found]

    def _fixed_problems(self, fixed: _Fixed) -> list[tuple[str, str, DeadLetterReason]]:
        name = fixed.event_name
        meter = self._by_name.get(name)
        if meter is None:
            return [
                (
                    fixed.name_key,
                    f"no_active_meter: no meter in this Stripe account has event name "
                    f"{name!r}, so Stripe would drop every event: create the meter in the "
                    f"Dashboard (event name {name!r}), or set {fixed.name_key} to the event "
                    "name of an existing meter",
                    "no_active_meter",
                )
            ]
        if not meter.active:
            return [
                (
                    fixed.name_key,
                    f"no_active_meter: meter {meter.id} for event name {name!r} is inactive, "
                    "so Stripe would drop every event: reactivate the meter in the Dashboard",
                    "no_active_meter",
                )
            ]
        found: list[tuple[str, str, DeadLetterReason]] = []
        if meter.customer_payload_key != fixed.customer_key:
            found.append(
                (
                    fixed.customer_key_setting,
                    f"meter_payload_mismatch: meter {meter.id} for event name {name!r} "
                    f"expects the customer under {meter.customer_payload_key!r}, the config "
                    f"sends it under {fixed.customer_key!r}: set "
                    f"{fixed.customer_key_setting} to {meter.customer_payload_key!r}",
                    "meter_payload_mismatch",
                )
            )
        if meter.formula != "count" and meter.value_payload_key != fixed.value_key:
            found.append(
                (
                    fixed.value_key_setting,
                    f"meter_payload_mismatch: meter {meter.id} for event name {name!r} "
                    f"expects the value under {meter.value_payload_key!r}, the config sends "
                    f"it under {fixed.value_key!r}: set {fixed.value_key_setting} to "
                    f"{meter.value_payload_key!r}",
                    "meter_payload_mismatch",
                )
            )
        if meter.event_time_window and not self.allow_windowed:
            found.append(
                (fixed.name_key, f"windowed_meter: {_windowed_message(meter)}", "windowed_meter")
            )
        return found


def _windowed_message(meter: Meter) -> str:
    return (
        f"meter {meter.id} for event name {meter.event_name!r} has event_time_window "
        f"{meter.event_time_window!r}: Stripe keeps only the latest event per customer per "
        f"{meter.event_time_window}, so one event per record would bill the last record and "
        "drop the others; set meters.allow_windowed to true only if the records carry "
        "running totals"
    )


# -- start-up ---------------------------------------------------------------------------


async def fetch_catalog(config: MeterstreamConfig, *, attempts: int | None = None) -> MeterCatalog:
    """The catalog for ``config``, listed from Stripe; retries outages with backoff.

    ``attempts`` None retries until Stripe answers (logging a warning each time); otherwise
    the last BackoffError is raised after that many attempts, its message starting with
    "Stripe unreachable". A refused key (or a wrong ``stripe.api_base``) is a ConfigError.
    With ``meters.preflight: false`` nothing is fetched and the catalog checks nothing.
    """
    settings = config.meters
    if not settings.preflight:
        return MeterCatalog((), enabled=False)
    api_key = config.require_api_key()

    async def fetch() -> list[Meter]:
        return await list_meters(config.stripe, api_key)

    try:
        meters = await retry_outages(
            fetch,
            doing="listing billing meters",
            initial_seconds=config.delivery.backoff_initial_seconds,
            max_seconds=config.delivery.backoff_max_seconds,
            attempts=attempts,
        )
    except AuthenticationError as exc:
        raise ConfigError([(_auth_setting(exc), str(exc))]) from None
    return MeterCatalog(
        meters,
        fetch=fetch,
        refresh_seconds=settings.refresh_seconds,
        allow_windowed=settings.allow_windowed,
    )


def account_catalog(config: MeterstreamConfig, account: str) -> MeterCatalog:
    """The catalog of a connected account: empty and due, so its first record makes the
    meter gate list the account's meters (``Stripe-Context``) before deciding anything."""
    settings = config.meters
    if not settings.preflight:
        return MeterCatalog((), enabled=False, account=account)
    api_key = config.require_api_key()

    async def fetch() -> list[Meter]:
        return await list_meters(config.stripe, api_key, account=account)

    return MeterCatalog(
        (),
        fetch=fetch,
        refresh_seconds=settings.refresh_seconds,
        account=account,
        listed=False,
        allow_windowed=settings.allow_windowed,
    )


def _auth_setting(exc: AuthenticationError) -> str:
    return "stripe.api_base" if exc.status in (404, 405) else "stripe.api_key"


async def preflight(config: MeterstreamConfig) -> MeterCatalog:
    """What ``meterstream run`` does before it consumes: the catalog, or a ConfigError.

    Waits out Stripe outages (retrying with ``delivery.backoff_*``, a warning each time);
    a ConfigError lists one line per problem (see ``MeterCatalog.problems``).
    """
    catalog = await fetch_catalog(config)
    if not config.mapping.stripe_account:
        # With connected accounts the mapping's event names must fit each account's meters,
        # which the meter gate checks per record (the platform's may have none of them).
        ensure_mapping_fits(catalog, config.mapping)
    return catalog


def ensure_mapping_fits(catalog: MeterCatalog, mapping: MappingConfig) -> None:
    """Raise ConfigError with one line per preflight problem, if there is any."""
    pairs = catalog.problem_pairs(mapping)
    if pairs:
        raise ConfigError(pairs)


def describe(meters: Iterable[Meter]) -> list[str]:
    """The meters as aligned text lines (event name, id, status, formula, keys)."""
    header = ("EVENT NAME", "METER ID", "STATUS", "FORMULA", "CUSTOMER KEY", "VALUE KEY")
    rows = [header] + [
        (
            m.event_name,
            m.id,
            m.status,
            m.formula + (f" (per {m.event_time_window})" if m.event_time_window else ""),
            m.customer_payload_key,
            m.value_payload_key if m.formula != "count" else "-",
        )
        for m in meters
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
