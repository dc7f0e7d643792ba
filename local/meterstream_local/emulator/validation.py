"""The contract checks of ``POST /v2/billing/meter_event_stream``, as plain Python.

Two kinds of checks, as with Stripe. A malformed request or event (shape, types, lengths,
identifier, timestamp window) refuses the whole request with a 400 (the connector splits
batches to find the culprit). A well-formed event is accepted with the request's 200 and
then validated against its meter and customer: ``no_meter``, ``archived_meter``,
``meter_event_no_customer_defined``, ``meter_event_invalid_value``,
``meter_event_value_too_many_digits``, ``meter_event_customer_not_found``. Those events
are dropped and reported later as thin events (see ``reports``); with the
``sync_validation`` knob they refuse the request instead, as the emulator once did.

This runs for every event the connector's benchmark sends, so it is one flat loop with
no per-event function calls beyond the C-implemented ones.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from meterstream_local.emulator.meters import DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, Meter
from meterstream_local.emulator.reports import DroppedEvent

#: Stripe accepts 1..100 events per stream request.
MAX_EVENTS_PER_REQUEST = 100
#: Stripe limits ``identifier`` and ``event_name`` to 100 characters.
MAX_IDENTIFIER_LENGTH = 100
MAX_EVENT_NAME_LENGTH = 100
#: Values are whole numbers of at most 15 significant digits.
MAX_VALUE_DIGITS = 15
#: Event timestamps: at most 35 calendar days in the past, 5 minutes in the future.
MAX_AGE_SECONDS = 35 * 86_400
MAX_FUTURE_SECONDS = 5 * 60
#: The fields a v2 meter event may carry.
EVENT_FIELDS = frozenset({"event_name", "identifier", "payload", "timestamp"})
#: How many invalid events one error message lists before summarising.
MAX_LISTED_PROBLEMS = 5

#: One accepted event: (event_name, customer, value, epoch seconds, identifier or None).
CheckedEvent = tuple[str, str, int, float, str | None]


@dataclass
class RequestRejected(Exception):
    """A 400 for the whole request; ``codes`` counts each invalid event by code."""

    code: str
    message: str
    param: str | None = None
    codes: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def parse_timestamp(text: str) -> float | None:
    """Epoch seconds of an RFC 3339 date-time (offset required), or None if it is not one."""
    if len(text) < 20 or text[10] not in "Tt":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def check_events(
    body: Any,
    meters: Mapping[str, Meter],
    *,
    auto_meters: bool,
    now: float,
    customers: Container[str] | None = None,
    drop_customers: Container[str] = frozenset(),
    sync: bool = False,
) -> tuple[list[CheckedEvent], list[DroppedEvent]]:
    """The events of a stream request body: (accepted, dropped); raises ``RequestRejected``.

    A malformed request or event (shape, types, lengths, timestamp) refuses the whole
    request with a 400. What Stripe checks against the meter and the customer after the
    200 (``no_meter``, ``archived_meter``, customer and value keys, unknown customers)
    drops the event instead; with ``sync`` it refuses the request too (the strict mode).
    ``customers`` None means every customer exists; ``drop_customers`` are treated as
    unknown whatever ``customers`` says.
    """
    if not isinstance(body, dict):
        raise RequestRejected("invalid_request", "the request body must be a JSON object")
    events = body.get("events")
    unknown_top = set(body) - {"events"}
    if unknown_top:
        name = sorted(unknown_top)[0]
        raise RequestRejected("parameter_unknown", f"unknown parameter: {name}", name)
    if events is None:
        raise RequestRejected("parameter_missing", "missing required parameter: events", "events")
    if not isinstance(events, list):
        raise RequestRejected("invalid_request", "events must be an array", "events")
    if not events:
        raise RequestRejected(
            "parameter_invalid_empty", "events must hold at least one event", "events"
        )
    if len(events) > MAX_EVENTS_PER_REQUEST:
        raise RequestRejected(
            "array_too_long",
            f"events holds {len(events)} events; at most {MAX_EVENTS_PER_REQUEST} are allowed "
            "per request",
            "events",
        )

    oldest = now - MAX_AGE_SECONDS
    newest = now + MAX_FUTURE_SECONDS
    checked: list[CheckedEvent] = []
    append = checked.append
    problems: list[tuple[int, str, str, str]] = []  # (index, code, param, message)
    dropped: list[DroppedEvent] = []
    meters_get = meters.get
    check_customers = customers is not None or bool(drop_customers)
    # event_name -> (customer key, value key, value checked, meter problem or None): one
    # meter lookup per name.
    known: dict[str, tuple[str, str, bool, tuple[str, str, str] | None]] = {}
    fromisoformat = datetime.fromisoformat

    for index, event in enumerate(events):
        if type(event) is not dict:
            problems.append((index, "invalid_request", "", "an event must be a JSON object"))
            continue

        name = event.get("event_name")
        keys = known.get(name)  # type: ignore[arg-type]  # any JSON value; str checked below
        if keys is None:
            if type(name) is not str or not name:
                problems.append(
                    (index, "parameter_missing", "event_name", "event_name is required (a string)")
                )
                continue
            if len(name) > MAX_EVENT_NAME_LENGTH:
                problems.append(
                    (
                        index,
                        "string_length_exceeds_maximum",
                        "event_name",
                        f"event_name is longer than {MAX_EVENT_NAME_LENGTH} characters",
                    )
                )
                continue
            meter = meters_get(name)
            if meter is None:
                if auto_meters:
                    keys = (DEFAULT_CUSTOMER_KEY, DEFAULT_VALUE_KEY, True, None)
                else:
                    keys = (
                        DEFAULT_CUSTOMER_KEY,
                        DEFAULT_VALUE_KEY,
                        False,
                        ("no_meter", "event_name", f"no active meter for event_name {name!r}"),
                    )
            elif not meter.active:
                keys = (
                    meter.customer_key,
                    meter.value_key,
                    False,
                    ("archived_meter", "event_name", f"the meter for {name!r} is inactive"),
                )
            else:
                keys = (meter.customer_key, meter.value_key, meter.formula != "count", None)
            known[name] = keys
        customer_key, value_key, check_value, meter_problem = keys

        payload = event.get("payload")
        if type(payload) is not dict:
            problems.append(
                (index, "parameter_missing", "payload", "payload is required (an object)")
            )
            continue
        bad_entry = False
        for item in payload.values():
            if type(item) is not str:
                bad_entry = True
                break
        if bad_entry:
            key = next(k for k, v in payload.items() if type(v) is not str)
            problems.append(
                (
                    index,
                    "invalid_payload",
                    f"payload.{key}",
                    f"payload values must be strings; {key!r} is not",
                )
            )
            continue

        stamp = event.get("timestamp")
        if stamp is None:
            moment = now
        else:
            # parse_timestamp(), inlined: this runs for every event.
            parsed = None
            if type(stamp) is str and len(stamp) >= 20 and stamp[10] in "Tt":
                try:
                    moment_dt = fromisoformat(stamp)
                except ValueError:
                    moment_dt = None
                if moment_dt is not None and moment_dt.tzinfo is not None:
                    parsed = moment_dt.timestamp()
            if parsed is None:
                problems.append(
                    (
                        index,
                        "invalid_timestamp",
                        "timestamp",
                        "timestamp must be an RFC 3339 date-time with an offset",
                    )
                )
                continue
            if parsed < oldest:
                problems.append(
                    (
                        index,
                        "timestamp_too_far_in_past",
                        "timestamp",
                        "timestamp is more than 35 days in the past",
                    )
                )
                continue
            if parsed > newest:
                problems.append(
                    (
                        index,
                        "timestamp_in_future",
                        "timestamp",
                        "timestamp is more than 5 minutes in the future",
                    )
                )
                continue
            moment = parsed

        identifier = event.get("identifier")
        if identifier is not None and not (
            type(identifier) is str and 0 < len(identifier) <= MAX_IDENTIFIER_LENGTH
        ):
            problems.append(
                (
                    index,
                    "invalid_identifier",
                    "identifier",
                    f"identifier must be a non-empty string of at most {MAX_IDENTIFIER_LENGTH} "
                    "characters",
                )
            )
            continue
        # event_name and payload are present (checked above): any other key is unknown, or
        # a known optional one set to null. Counting is cheaper than a set operation.
        if len(event) != 2 + (stamp is not None) + (identifier is not None):
            problems.append((index, *_field_problem(event)))
            continue

        # The event is well-formed; what follows is what Stripe checks after the 200.
        customer: str | None = payload.get(customer_key)
        raw: str | None = payload.get(value_key)
        if (
            customer
            and meter_problem is None
            and not check_customers
            and raw is not None
            and raw.isdigit()
            and raw.isascii()
            and len(raw) <= MAX_VALUE_DIGITS
        ):
            # The common case: a known customer and a plain non-negative whole number.
            append((name, customer, int(raw), moment, identifier))
            continue
        outcome = _meter_checks(
            meter_problem,
            customer,
            raw,
            customer_key=customer_key,
            value_key=value_key,
            check_value=check_value,
            customers=customers,
            drop_customers=drop_customers,
        )
        if isinstance(outcome, int):
            append((name, customer or "", outcome, moment, identifier))
        elif sync:
            problems.append((index, *outcome))
        else:
            dropped.append((index, *outcome, name, identifier))

    if problems:
        raise _rejection(problems)
    return checked, dropped


def _meter_checks(
    meter_problem: tuple[str, str, str] | None,
    customer: str | None,
    raw: str | None,
    *,
    customer_key: str,
    value_key: str,
    check_value: bool,
    customers: Container[str] | None,
    drop_customers: Container[str],
) -> int | tuple[str, str, str]:
    """The value of a well-formed event, or why Stripe drops it (code, param, message)."""
    if meter_problem is not None:
        return meter_problem
    if not customer:
        return (
            "meter_event_no_customer_defined",
            f"payload.{customer_key}",
            f"payload has no customer under {customer_key!r}",
        )
    value = 0
    if raw is not None and raw.isdigit() and raw.isascii() and len(raw) <= MAX_VALUE_DIGITS:
        value = int(raw)
    elif check_value:
        value_or_problem = _unusual_value(raw, value_key)
        if isinstance(value_or_problem, tuple):
            return value_or_problem
        value = value_or_problem
    # customers None: every customer exists (drop_customers still apply).
    if customer in drop_customers or (customers is not None and customer not in customers):
        return (
            "meter_event_customer_not_found",
            f"payload.{customer_key}",
            f"no customer {customer!r}",
        )
    return value


def _unusual_value(raw: str | None, value_key: str) -> int | tuple[str, str, str]:
    """The value when it is absent, negative or long; or (code, param, message)."""
    param = f"payload.{value_key}"
    if raw is None:
        return ("meter_event_invalid_value", param, f"payload has no value under {value_key!r}")
    # Negative values are allowed: Stripe documents them for correcting usage.
    digits = raw[1:] if raw[:1] == "-" else raw
    if not (digits.isdigit() and digits.isascii()):
        return ("meter_event_invalid_value", param, f"value {raw[:40]!r} is not a whole number")
    if len(digits.lstrip("0")) > MAX_VALUE_DIGITS:
        return (
            "meter_event_value_too_many_digits",
            param,
            f"value has more than {MAX_VALUE_DIGITS} significant digits",
        )
    return int(raw)


def _field_problem(event: dict[str, Any]) -> tuple[str, str, str]:
    """(code, param, message) for an event with an unknown key or a null optional one."""
    unknown = sorted(set(event) - EVENT_FIELDS)
    if unknown:
        return ("parameter_unknown", unknown[0], f"unknown parameter: {unknown[0]}")
    null = next((key for key in sorted(event) if event[key] is None), "event")
    return ("invalid_request", null, f"{null} must not be null (leave it out instead)")


def _rejection(problems: list[tuple[int, str, str, str]]) -> RequestRejected:
    codes: dict[str, int] = {}
    for _, code, _, _ in problems:
        codes[code] = codes.get(code, 0) + 1
    index, code, param, _ = problems[0]
    listed = "; ".join(
        f"events[{i}]: {message}" for i, _, _, message in problems[:MAX_LISTED_PROBLEMS]
    )
    more = len(problems) - MAX_LISTED_PROBLEMS
    if more > 0:
        listed += f"; and {more} more invalid events"
    where = f"events[{index}].{param}" if param else f"events[{index}]"
    return RequestRejected(code, f"{len(problems)} invalid event(s): {listed}", where, codes)
