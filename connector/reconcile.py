"""``meterstream reconcile``: proof that Stripe holds what Kafka held, per meter and customer.

The Kafka side (``connector.kafka_totals``) is what the consumer group committed, mapped
again with the current configuration, without the dead letters, tallied by event time in
[start, end). The Stripe side is the meter's event summary for each (meter, customer) over
the same window (``GET /v1/billing/meters/{id}/event_summaries``, see ``docs/stripe.md``).
Customers are those seen in Kafka plus any ``--customer``: a customer Stripe billed that
Kafka never saw can only be found by naming it.

With ``mapping.stripe_account`` the comparison is per connected account: each account's
events (as ``run`` routes them) against that account's meters and summaries, read with
``Stripe-Context``; the rows name the account.

Exit 0 when every pair matches, 1 when any differs (or the reconciliation could not
finish: the message says which), 2 for a bad invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from connector.config import MeterstreamConfig, load_config
from connector.errors import ConfigError
from connector.runner import add_config_argument
from connector.timestamps import format_rfc3339_ms, parse_timestamp

if TYPE_CHECKING:  # imported when used: `meterstream --help` must not pay for Kafka and httpx
    from connector.kafka_totals import KafkaTotals, Tally
    from connector.meters import Meter

#: Stripe's summaries are eventually consistent: a window ending this recently may lag.
RECENT_SECONDS = 600
#: Summary requests in flight at once (Stripe's read limits are per account).
STRIPE_CONCURRENCY = 8
#: Attempts per Stripe request before reconcile gives up (backoff between them).
STRIPE_ATTEMPTS = 8
HOUR = 3600

Status = Literal["match", "differs", "no_meter"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``meterstream reconcile``."""
    add_config_argument(
        parser,
        "the connector's YAML config (default: $METERSTREAM_CONFIG): its topics, group, "
        "dead-letter topic, mapping and Stripe settings",
    )
    parser.add_argument(
        "--start",
        required=True,
        metavar="TIME",
        help="window start, inclusive: a whole hour, RFC 3339 (2026-12-01T00:00:00Z)",
    )
    parser.add_argument(
        "--end",
        required=True,
        metavar="TIME",
        help="window end, exclusive: a whole hour, RFC 3339 (2026-12-02T00:00:00Z)",
    )
    parser.add_argument(
        "--event-name",
        action="append",
        default=[],
        metavar="NAME",
        help="only this event name (repeatable; default: every event name)",
    )
    parser.add_argument(
        "--customer",
        action="append",
        default=[],
        metavar="CUSTOMER",
        help="also compare this customer (repeatable), e.g. one Stripe billed but Kafka never saw",
    )
    parser.add_argument(
        "--lookback-hours",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="read Kafka from records this long before --start (by record timestamp), for "
        "events that reached Kafka late or early (default 24)",
    )
    parser.add_argument(
        "--json", metavar="PATH", default=None, help="also write the result as JSON to PATH"
    )


@dataclass(frozen=True, slots=True)
class Row:
    """One (meter, customer): what Kafka held, what Stripe holds."""

    event_name: str
    customer: str
    meter_id: str | None
    formula: str | None
    kafka: int
    stripe: float | None
    #: The connected account compared (``mapping.stripe_account``); None: the platform.
    account: str | None = None

    @property
    def status(self) -> Status:
        """``match``, ``differs``, or ``no_meter`` (Stripe has no meter for the event name)."""
        if self.stripe is None:
            return "no_meter"
        if math.isclose(self.stripe, self.kafka, rel_tol=1e-12, abs_tol=1e-9):
            return "match"
        return "differs"

    @property
    def difference(self) -> float | None:
        """Stripe minus Kafka: negative when Stripe holds less than Kafka."""
        return None if self.stripe is None else self.stripe - self.kafka

    def to_json(self) -> dict[str, Any]:
        """The row as a JSON object (numbers as numbers)."""
        account = {"account": self.account} if self.account else {}
        return {
            **account,
            "event_name": self.event_name,
            "customer": self.customer,
            "meter_id": self.meter_id,
            "formula": self.formula,
            "kafka": self.kafka,
            "stripe": _number(self.stripe),
            "difference": _number(self.difference),
            "status": self.status,
        }


def parse_whole_hour(value: str, flag: str) -> int:
    """Epoch seconds of ``value``, which must be a whole UTC hour; else ConfigError."""
    try:
        epoch = parse_timestamp(value)
    except ValueError as exc:
        raise ConfigError(
            [(flag, f"{value!r} is not an RFC 3339 time ({exc}), e.g. 2026-12-01T00:00:00Z")]
        ) from None
    if epoch % HOUR:
        below = format_rfc3339_ms(epoch - epoch % HOUR)[:19] + "Z"
        raise ConfigError(
            [
                (
                    flag,
                    f"{value!r} is not a whole hour: Stripe's event summaries are compared "
                    f"over whole hours (UTC), e.g. {below}",
                )
            ]
        )
    return int(epoch)


def kafka_value(found: Tally | None, formula: str | None) -> int:
    """The Kafka figure a meter of ``formula`` would show (a sum when there is no meter)."""
    if found is None:
        return 0
    if formula == "count":
        return found.count
    if formula == "last":
        return found.last_value
    return found.sum


def pairs_to_compare(
    totals: KafkaTotals,
    meters: dict[str, Meter],
    *,
    event_names: list[str],
    customers: list[str],
) -> list[tuple[str, str]]:
    """(event name, customer): every pair Kafka saw, and each ``--customer`` for every event
    name in scope (``--event-name``, else every meter and every name Kafka saw)."""
    pairs = set(totals.tallies)
    if customers:
        names = set(event_names) or set(meters) | {name for name, _ in totals.tallies}
        pairs.update((name, customer) for name in names for customer in customers)
    return sorted(pairs)


async def stripe_values(
    config: MeterstreamConfig,
    pairs: list[tuple[Meter, str]],
    *,
    start: int,
    end: int,
    progress: _Progress | None = None,
    account: str | None = None,
) -> dict[tuple[str, str], float]:
    """Each (meter, customer)'s aggregated value over [start, end), from event summaries
    (of the connected ``account``'s meters, if given)."""
    from connector.stripe_v1 import StripeV1Client, retry_outages

    api_key = config.require_api_key()
    results: dict[tuple[str, str], float] = {}
    slots = asyncio.Semaphore(STRIPE_CONCURRENCY)
    async with StripeV1Client(config.stripe, api_key, max_connections=STRIPE_CONCURRENCY) as api:

        async def read_summary(meter: Meter, customer: str) -> None:
            params: dict[str, str | int] = {
                "customer": customer,
                "start_time": start,
                "end_time": end,
            }
            doing = f"reading event summaries of meter {meter.id} for {customer}"

            async def read() -> float:
                rows = [
                    row
                    async for row in api.list_all(
                        f"/v1/billing/meters/{meter.id}/event_summaries",
                        params,
                        doing,
                        account=account,
                    )
                ]
                return _aggregate(rows, meter.formula)

            async with slots:
                results[(meter.event_name, customer)] = await retry_outages(
                    read,
                    doing=doing,
                    initial_seconds=config.delivery.backoff_initial_seconds,
                    max_seconds=config.delivery.backoff_max_seconds,
                    attempts=STRIPE_ATTEMPTS,
                )
            if progress is not None:
                progress("event summaries", len(results), len(pairs))

        async with asyncio.TaskGroup() as group:
            for meter, customer in pairs:
                group.create_task(read_summary(meter, customer))
    if progress is not None:
        progress.flush("event summaries", len(results), len(pairs))
    return results


def _aggregate(rows: list[dict[str, Any]], formula: str) -> float:
    """One figure from a list of summaries: added up, or the latest one for ``last``."""
    values = [
        (row.get("end_time") or 0, float(row.get("aggregated_value") or 0.0))
        for row in rows
        if isinstance(row.get("aggregated_value"), int | float)
    ]
    if not values:
        return 0.0
    if formula == "last":
        return max(values, key=lambda pair: pair[0])[1]
    return math.fsum(value for _, value in values)


def compare(
    totals: KafkaTotals,
    meters: dict[str, Meter],
    pairs: list[tuple[str, str]],
    stripe: dict[tuple[str, str], float],
) -> list[Row]:
    """Rows for every pair: mismatches first, then by event name and customer."""
    rows = []
    for name, customer in pairs:
        meter = meters.get(name)
        formula = meter.formula if meter is not None else None
        rows.append(
            Row(
                event_name=name,
                customer=customer,
                meter_id=meter.id if meter is not None else None,
                formula=formula,
                kafka=kafka_value(totals.tallies.get((name, customer)), formula),
                stripe=stripe.get((name, customer)) if meter is not None else None,
            )
        )
    rows.sort(key=lambda row: (row.status == "match", row.event_name, row.customer))
    return rows


def render(rows: list[Row], summary: str) -> list[str]:
    """The table and the summary line, as text lines."""
    header: tuple[str, ...] = (
        "EVENT NAME",
        "CUSTOMER",
        "METER ID",
        "FORMULA",
        "KAFKA",
        "STRIPE",
        "DIFF",
        "STATUS",
    )
    accounts = any(row.account for row in rows)
    cells = [("ACCOUNT", *header) if accounts else header] + [
        (
            *((row.account or "-",) if accounts else ()),
            row.event_name,
            row.customer,
            row.meter_id or "-",
            row.formula or "-",
            _show(row.kafka),
            _show(row.stripe),
            _show(row.difference, signed=True),
            row.status,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    numeric = {5, 6, 7} if accounts else {4, 5, 6}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ).rstrip()
        for line in cells
    ]
    return [*lines, summary]


def summarise(rows: list[Row], totals: KafkaTotals, start: int, end: int) -> str:
    """One line: how many pairs differ, over which window, from how many records."""
    differing = sum(row.status != "match" for row in rows)
    verdict = (
        f"{differing} of {len(rows)} (meter, customer) pairs differ"
        if differing
        else f"all {len(rows)} (meter, customer) pairs match"
    )
    return (
        f"{verdict} over [{_hour(start)}, {_hour(end)}); Kafka: {totals.records_read:,} "
        f"committed records read, {totals.events:,} events in the window, "
        f"{totals.dead_lettered:,} dead-lettered, {totals.outside_window:,} outside the "
        f"window, {totals.unmappable:,} unmappable"
    )


def to_json(rows: list[Row], totals: KafkaTotals, start: int, end: int, summary: str) -> bytes:
    """The whole result as JSON (what ``--json`` writes)."""
    return orjson.dumps(
        {
            "start": _hour(start),
            "end": _hour(end),
            "matches": all(row.status == "match" for row in rows),
            "pairs": len(rows),
            "differing": sum(row.status != "match" for row in rows),
            "summary": summary,
            "kafka": {
                "records_read": totals.records_read,
                "events": totals.events,
                "dead_lettered": totals.dead_lettered,
                "outside_window": totals.outside_window,
                "unmappable": totals.unmappable,
                "other_event_names": totals.other_event_names,
                "partitions": [
                    {"topic": r.topic, "partition": r.partition, "start": r.start, "end": r.end}
                    for r in totals.ranges
                ],
            },
            "rows": [row.to_json() for row in rows],
        },
        option=orjson.OPT_INDENT_2,
    )


class _Progress:
    """Progress lines on stderr every few seconds (only when stderr is a terminal)."""

    def __init__(self, every_seconds: float = 5.0) -> None:
        self._every = every_seconds
        self._next = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._every
            self.flush(what, done, total)

    @staticmethod
    def flush(what: str, done: int, total: int) -> None:
        share = f" ({100 * done / total:.0f}%)" if total else ""
        print(f"reconcile: {what}: {done:,} of {total:,}{share}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    """Run one reconciliation; see the module docstring for the exit codes."""
    from connector.kafka_totals import committed_ranges, dead_letter_keys, tally
    from connector.meters import list_meters
    from connector.stripe_v1 import retry_outages

    start = parse_whole_hour(args.start, "--start")
    end = parse_whole_hour(args.end, "--end")
    if end <= start:
        raise ConfigError([("--end", f"must be after --start ({args.start})")])
    if args.lookback_hours < 0:
        raise ConfigError([("--lookback-hours", "must be zero or more")])
    config = load_config(args.config)
    config.require_api_key()
    if end > time.time() - RECENT_SECONDS:
        print(
            f"reconcile: warning: --end is less than {RECENT_SECONDS // 60} minutes ago (or "
            "in the future): Stripe's summaries are eventually consistent, recent usage may "
            "not show yet",
            file=sys.stderr,
        )
    progress = _Progress() if sys.stderr.isatty() else None

    def meters_of(account: str | None) -> dict[str, Meter]:
        return _meters_by_name(
            asyncio.run(
                retry_outages(
                    lambda: list_meters(config.stripe, config.require_api_key(), account=account),
                    doing=f"listing billing meters of {account}"
                    if account
                    else "listing billing meters",
                    initial_seconds=config.delivery.backoff_initial_seconds,
                    max_seconds=config.delivery.backoff_max_seconds,
                    attempts=STRIPE_ATTEMPTS,
                )
            )
        )

    platform = None if config.mapping.stripe_account else meters_of(None)
    since_ms = int((start - args.lookback_hours * HOUR) * 1000)
    ranges = committed_ranges(config, since_ms)
    dead = dead_letter_keys(config, ranges, progress)
    totals = tally(
        config,
        ranges,
        dead,
        start=start,
        end=end,
        event_names=args.event_name,
        progress=progress,
    )
    # The platform's tallies against its meters; or each connected account's against its own.
    scopes: list[tuple[str | None, KafkaTotals, dict[str, Meter]]] = (
        [(None, totals, platform)]
        if platform is not None
        else [
            (account, replace(totals, tallies=tallies), meters_of(account))
            for account, tallies in sorted(totals.by_account.items())
        ]
    )
    rows: list[Row] = []
    for account, scoped, meters in scopes:
        pairs = pairs_to_compare(
            scoped, meters, event_names=args.event_name, customers=args.customer
        )
        with_meter = [(meters[name], customer) for name, customer in pairs if name in meters]
        stripe = asyncio.run(
            stripe_values(
                config, with_meter, start=start, end=end, progress=progress, account=account
            )
        )
        rows += [replace(row, account=account) for row in compare(scoped, meters, pairs, stripe)]
    rows.sort(key=lambda row: (row.status == "match", row.account or "", row.event_name))
    summary = summarise(rows, totals, start, end)
    for line in render(rows, summary):
        print(line)
    if args.json:
        Path(args.json).write_bytes(to_json(rows, totals, start, end, summary) + b"\n")
    return 0 if all(row.status == "match" for row in rows) else 1


def _meters_by_name(meters: Iterable[Meter]) -> dict[str, Meter]:
    by_name: dict[str, Meter] = {}
    for meter in meters:
        if meter.event_name not in by_name or meter.active:
            by_name[meter.event_name] = meter
    return by_name


def _hour(epoch: int) -> str:
    return format_rfc3339_ms(epoch)[:19] + "Z"


def _number(value: float | None) -> float | int | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _show(value: float | None, *, signed: bool = False) -> str:
    number = _number(value)
    if number is None:
        return "-"
    return f"{number:+}" if signed and number else str(number)
