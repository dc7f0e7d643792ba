"""A decoded record to Stripe meter events: every check Stripe would fail asynchronously, done here.

Stripe validates meter events after answering 200, so an event it would refuse is lost
silently unless it is refused here, before sending, with a dead-letter reason. The rules:

- Paths are dotted (``usage.tokens.input``); a path through a non-object or a missing
  key, or to ``null``, is absent. Keys that themselves contain a dot are not addressable.
- A value of the wrong JSON type (a customer that is a number, a timestamp that is an
  object) is ``schema_violation``; an absent or empty customer, event name or value is
  ``mapping_error``; a value that is not a whole number (fraction, boolean, NaN, ``"1e3"``),
  has more than 15 significant digits, or is negative without
  ``mapping.allow_negative_values`` is ``invalid_value``; a time outside Stripe's window
  is ``timestamp_out_of_range``; anything over the size caps below is ``record_too_large``.
- Customer and event name lose surrounding whitespace (a producer artefact; Stripe would
  match neither with it). The record ``id`` (a string or an integer) is used as is.
- Timestamp: the record's own (RFC 3339 or epoch seconds/milliseconds, see
  ``connector.timestamps``), else the Kafka record timestamp, else now; it must lie within
  [now - 35 days, now + 5 minutes], both edges included. Stripe measures at receipt, so an
  event close to the 35-day edge can still expire while a Stripe outage delays it.
- Payload: ``{customer key: customer, value key: value}`` plus dimensions. With
  ``mapping.dimensions: null`` every other top-level string field is a dimension (never the
  mapped fields, the canonical names id/customer/event_name/value/timestamp, or the payload
  keys themselves; non-strings are ignored). With a list of paths each present value is
  copied under its last path segment; numbers and booleans become strings
  (``true``/``false``), objects and arrays are ``schema_violation``.
- Fan-out (``mapping.fan_out``): one event per meter, all sharing customer, timestamp and
  dimensions; ``mapping.event_name`` is then unused. All or nothing: one bad value refuses
  the record. An ``optional`` meter whose value is absent is skipped; a record where every
  meter is skipped is ``mapping_error``.
- Connected account (``mapping.stripe_account``): ``Mapper.account`` reads it beside
  ``map``; it never enters the event (not a dimension, not in the identifier).

Hot path: ``Mapper.map`` runs once per record, so the configuration is compiled in
``__init__``: paths split once, and for one event per record a function with the
configuration bound in closure cells (``Mapper.map_record``, positional arguments) that
reads top-level keys directly when every path is one, checks the wire timestamp shape with
one slice, and finds the default dimensions once per record shape. A record costs a few
dict lookups and string checks (docs/performance.md).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, Protocol, TypedDict

from connector.config import MappingConfig
from connector.errors import ConfigError, DeadLetterReason, RecordError
from connector.identifiers import MAX_IDENTIFIER_LENGTH, identifier_for
from connector.timestamps import (
    MILLISECONDS_THRESHOLD,
    STRIPE_MAX_AGE_SECONDS,
    STRIPE_MAX_FUTURE_SECONDS,
    format_rfc3339_ms,
    is_canonical,
    parse_timestamp,
)

#: Stripe refuses values with more than 15 significant digits.
MAX_VALUE_DIGITS = 15
_VALUE_LIMIT = 10**MAX_VALUE_DIGITS
#: Stripe's limit for ``event_name`` (stated for v1 meter events; held for v2 as well).
MAX_EVENT_NAME_LENGTH = 100
#: Stripe customer ids are ~20 characters; anything this long is not one.
MAX_CUSTOMER_LENGTH = 255
#: Stripe documents no payload caps; these keep one event well inside any request limit
#: (50 keys x 600 characters = 30 kB) while no real meter dimension comes near them.
MAX_PAYLOAD_KEYS = 50
MAX_PAYLOAD_KEY_LENGTH = 100
MAX_PAYLOAD_VALUE_LENGTH = 500
#: Stripe account ids are ``acct_`` and ~16 letters and digits; this bounds a bad one.
MAX_ACCOUNT_LENGTH = 255
_ACCOUNT_ID = re.compile(r"acct_[A-Za-z0-9]+")
#: Field names of the canonical usage record: never copied as dimensions.
CANONICAL_FIELDS = frozenset({"id", "customer", "event_name", "value", "timestamp"})
#: Bad values are quoted in messages up to this many characters.
_SHOWN_CHARACTERS = 40
#: Record shapes (key tuples) whose dimension keys are remembered; more are read field by
#: field, so a producer with ever-new keys costs speed, never memory.
_MAX_SHAPES = 64
#: Epoch numbers below this magnitude (milliseconds: the year 33658) are read inline; any
#: other number (NaN, infinities, an int too large for a float) takes the general path.
_EPOCH_FAST_LIMIT = 1e15


class MeterEventBody(TypedDict):
    """One event exactly as Stripe's meter_event_stream takes it."""

    event_name: str
    identifier: str
    timestamp: str
    payload: dict[str, str]


class MapRecord(Protocol):
    """``Mapper.map`` with positional arguments (what the worker calls per record)."""

    def __call__(
        self,
        record: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
    ) -> list[MeterEventBody]:
        """The record's meter events, or RecordError."""
        ...


@dataclass(frozen=True, slots=True)
class _Meter:
    """A fan-out entry, compiled."""

    event_name: str
    value_path: tuple[str, ...]
    value_dotted: str
    customer_key: str
    value_key: str
    optional: bool


class Mapper:
    """Turns decoded records into meter event bodies per ``MappingConfig``; see module doc.

    ``clock`` (epoch seconds) sets "now" for Stripe's timestamp window and for records
    without any timestamp. Raises ConfigError for a mapping that could only produce bad
    events (duplicate payload keys, two fan-out meters with one event name).
    """

    def __init__(self, config: MappingConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._allow_negative = config.allow_negative_values
        self._customer_dotted = config.customer
        self._customer_path = _split(config.customer)
        self._value_dotted = config.value
        self._value_path = _split(config.value)
        self._constant_event_name = config.constant_event_name
        self._event_name_dotted = config.event_name or ""
        self._event_name_path = (
            _split(config.event_name)
            if config.event_name and not config.constant_event_name
            else None
        )
        self._timestamp_dotted = config.timestamp or ""
        self._timestamp_path = _split(config.timestamp) if config.timestamp else None
        self._id_dotted = config.identifier or ""
        self._id_path = _split(config.identifier) if config.identifier else None
        #: Connected accounts (``mapping.stripe_account``): read by ``account``, not ``map``.
        self._account_dotted = config.stripe_account or ""
        self._account_path = _split(config.stripe_account) if config.stripe_account else None
        self._customer_key = config.customer_payload_key
        self._value_key = config.value_payload_key
        self._meters = tuple(
            _Meter(
                event_name=meter.event_name,
                value_path=_split(meter.value),
                value_dotted=meter.value,
                customer_key=meter.customer_payload_key or config.customer_payload_key,
                value_key=meter.value_payload_key or config.value_payload_key,
                optional=meter.optional,
            )
            for meter in config.fan_out
        )
        payload_keys = {config.customer_payload_key, config.value_payload_key}
        for m in self._meters:
            payload_keys.update((m.customer_key, m.value_key))

        self._all_dimensions = config.dimensions is None
        self._dimensions = tuple(
            (path[-1], path, dotted)
            for dotted in config.dimensions or ()
            if (path := _split(dotted))
        )
        mapped_paths = [
            self._customer_path,
            self._value_path,
            self._event_name_path,
            self._timestamp_path,
            self._id_path,
            *(m.value_path for m in self._meters),
        ]
        #: Top-level fields never copied as dimensions in the all-strings mode.
        self._not_dimensions = frozenset(
            CANONICAL_FIELDS
            | payload_keys
            | {p[0] for p in (*mapped_paths, self._account_path) if p}
        )
        # The fast path: every path a top-level key, one event per record.
        self._flat = all(p is None or len(p) == 1 for p in mapped_paths) and not self._meters
        self._check(config, payload_keys)
        #: ``map`` with positional arguments, compiled for this mapping: what a hot loop calls.
        self.map_record: MapRecord = (
            self._map_fan_out_record if self._meters else _compile_single_event(self)
        )

    def _check(self, config: MappingConfig, payload_keys: set[str]) -> None:
        problems: list[tuple[str, str]] = []
        if config.customer_payload_key == config.value_payload_key:
            problems.append(("mapping.value_payload_key", "must differ from customer_payload_key"))
        names = [m.event_name for m in self._meters]
        for index, meter in enumerate(self._meters):
            if meter.customer_key == meter.value_key:
                problems.append(
                    (f"mapping.fan_out.{index}", "customer and value payload keys must differ")
                )
            if names.index(meter.event_name) != index:
                problems.append(
                    (
                        f"mapping.fan_out.{index}.event_name",
                        f"'{meter.event_name}' appears twice: both events would share one "
                        "identifier and Stripe would drop the second",
                    )
                )
        seen: set[str] = set()
        for key, _path, dotted in self._dimensions:
            where = f"mapping.dimensions ({dotted})"
            if key in payload_keys:
                problems.append((where, f"payload key '{key}' is already the customer or value"))
            elif key in seen:
                problems.append((where, f"payload key '{key}' comes from two paths"))
            elif len(key) > MAX_PAYLOAD_KEY_LENGTH:
                problems.append((where, f"payload key over {MAX_PAYLOAD_KEY_LENGTH} characters"))
            seen.add(key)
        if len(self._dimensions) + 2 > MAX_PAYLOAD_KEYS:
            problems.append(
                ("mapping.dimensions", f"at most {MAX_PAYLOAD_KEYS - 2} dimensions per event")
            )
        if problems:
            raise ConfigError(problems)

    # -- the hot path -------------------------------------------------------------------

    def map(
        self,
        record: dict[str, Any],
        *,
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
    ) -> list[MeterEventBody]:
        """The meter events for one record (one, or one per fan-out meter), or RecordError.

        ``kafka_timestamp_ms`` of None or not positive (librdkafka's -1: not available)
        counts as absent. ``map_record`` is the same with positional arguments.
        """
        return self.map_record(record, topic, partition, offset, kafka_timestamp_ms)

    def _map_fan_out_record(
        self,
        record: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
    ) -> list[MeterEventBody]:
        if type(record) is not dict:  # decode() guarantees it; a caller may not
            _fail("schema_violation", f"record is {kind_of(record)}, not a JSON object")
        return self._map_fan_out(record, topic, partition, offset, kafka_timestamp_ms)

    def account(self, record: dict[str, Any]) -> str | None:
        """The connected account a record's events go to (``mapping.stripe_account``), or
        None for the platform when the mapping has no such path. Never part of the event:
        the body and identifier are the same whichever account bills it.

        Missing, empty or not an ``acct_`` id: ``mapping_error``; not a string:
        ``schema_violation``.
        """
        path = self._account_path
        if path is None:
            return None
        raw = record.get(path[0]) if len(path) == 1 else _dig(record, path)
        account = _text(raw, "connected account", self._account_dotted, MAX_ACCOUNT_LENGTH)
        if not _ACCOUNT_ID.fullmatch(account):
            _fail(
                "mapping_error",
                f"connected account at '{self._account_dotted}' is not a Stripe account id "
                f"(acct_ followed by letters and digits): {_show(account)}",
            )
        return account

    def _map_fan_out(
        self,
        record: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
    ) -> list[MeterEventBody]:
        customer = _text(
            _dig(record, self._customer_path),
            "customer",
            self._customer_dotted,
            MAX_CUSTOMER_LENGTH,
        )
        timestamp = self._timestamp(
            _dig(record, self._timestamp_path) if self._timestamp_path else None,
            kafka_timestamp_ms,
        )
        raw_id = _dig(record, self._id_path) if self._id_path else None
        record_id = self._record_id(raw_id) if raw_id is not None else None
        dimensions: dict[str, str] = {}
        if self._all_dimensions:
            self._copy_string_fields(record, dimensions, reserved=2)
        elif self._dimensions:
            self._copy_dimensions(record, dimensions)

        events: list[MeterEventBody] = []
        for meter in self._meters:
            raw = _dig(record, meter.value_path)
            if raw is None and meter.optional:
                continue
            payload = {
                meter.customer_key: customer,
                meter.value_key: _whole_number(raw, meter.value_dotted, self._allow_negative),
            }
            payload.update(dimensions)
            events.append(
                {
                    "event_name": meter.event_name,
                    "identifier": identifier_for(
                        record_id,
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        event_name=meter.event_name,
                    ),
                    "timestamp": timestamp,
                    "payload": payload,
                }
            )
        if not events:
            paths = ", ".join(f"'{m.value_dotted}'" for m in self._meters)
            _fail("mapping_error", f"no fan-out meter has a value: {paths} are all absent")
        return events

    # -- fields ---------------------------------------------------------------------------

    def _record_id(self, raw: object) -> str:
        if isinstance(raw, str):
            if not raw:
                _fail("mapping_error", f"id at '{self._id_dotted}' is an empty string")
            return raw
        if type(raw) is int:
            return str(raw)
        return _fail(
            "schema_violation",
            f"id at '{self._id_dotted}' must be a string or an integer, not {kind_of(raw)}: "
            f"{_show(raw)}",
        )

    def _timestamp(self, raw: object, kafka_timestamp_ms: int | None) -> str:
        """The wire timestamp, after checking Stripe's window against ``clock``."""
        now = self._clock()
        if raw is None:
            if kafka_timestamp_ms is None or kafka_timestamp_ms <= 0:
                return format_rfc3339_ms(now)
            epoch = kafka_timestamp_ms / 1000.0
            source = "Kafka record timestamp"
            wire = None
        else:
            try:
                epoch = parse_timestamp(raw)
            except ValueError as exc:
                _fail(
                    "schema_violation",
                    f"timestamp at '{self._timestamp_dotted}' is not RFC 3339 or epoch "
                    f"seconds/milliseconds ({exc}): {_show(raw)}",
                )
            source = f"timestamp at '{self._timestamp_dotted}'"
            wire = raw if isinstance(raw, str) and is_canonical(raw) else None
        if epoch < now - STRIPE_MAX_AGE_SECONDS:
            _fail(
                "timestamp_out_of_range",
                f"{source} {_when(epoch)} is {_duration(now - epoch)} old, "
                f"{_duration(now - STRIPE_MAX_AGE_SECONDS - epoch)} beyond Stripe's limit "
                "of 35 days in the past",
            )
        if epoch > now + STRIPE_MAX_FUTURE_SECONDS:
            _fail(
                "timestamp_out_of_range",
                f"{source} {_when(epoch)} is {_duration(epoch - now)} in the future, "
                f"{_duration(epoch - now - STRIPE_MAX_FUTURE_SECONDS)} beyond Stripe's limit "
                "of 5 minutes in the future",
            )
        return wire if wire is not None else format_rfc3339_ms(epoch)

    def _copy_string_fields(
        self, record: dict[str, Any], payload: dict[str, str], reserved: int = 0
    ) -> None:
        """Every top-level string field that is not mapped: the canonical dimensions."""
        excluded = self._not_dimensions
        for key, value in record.items():
            if isinstance(value, str) and key not in excluded:
                if len(value) > MAX_PAYLOAD_VALUE_LENGTH or len(key) > MAX_PAYLOAD_KEY_LENGTH:
                    _check_dimension(key, value)  # explains why, and refuses
                payload[key] = value
        if len(payload) + reserved > MAX_PAYLOAD_KEYS:
            _fail(
                "record_too_large",
                f"{len(payload) + reserved - 2} dimension fields, over the "
                f"{MAX_PAYLOAD_KEYS - 2} a meter event may carry",
            )

    def _copy_dimensions(self, record: dict[str, Any], payload: dict[str, str]) -> None:
        for key, path, dotted in self._dimensions:
            value = _dig(record, path)
            if value is None:
                continue
            if isinstance(value, str):
                text = value
            elif isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int):
                text = str(value)
            elif isinstance(value, float):
                text = repr(value)
            else:
                _fail(
                    "schema_violation",
                    f"dimension at '{dotted}' must be a string, number or boolean, "
                    f"not {kind_of(value)}",
                )
            _check_dimension(key, text, dotted)
            payload[key] = text


# -- the compiled hot path ----------------------------------------------------------------


def _compile_single_event(mapper: Mapper) -> MapRecord:
    """``Mapper.map`` for a mapping with one event per record, its configuration bound once.

    The rules and the order of the checks are ``Mapper``'s (module doc); what is compiled
    is only where things are looked up: closure cells instead of attributes, one slice
    comparison for the wire timestamp shape, epoch numbers within the window formatted
    without the general parser, and the default dimensions found once per
    record shape (the tuple of a record's keys: one producer sends one or a few shapes).
    """
    flat = mapper._flat
    clock = mapper._clock
    allow_negative = mapper._allow_negative
    constant_event_name = mapper._constant_event_name
    customer_path, customer_dotted = mapper._customer_path, mapper._customer_dotted
    value_path, value_dotted = mapper._value_path, mapper._value_dotted
    event_name_path, event_name_dotted = mapper._event_name_path, mapper._event_name_dotted
    timestamp_path, id_path = mapper._timestamp_path, mapper._id_path
    customer_field, value_field = customer_path[0], value_path[0]
    event_name_field = event_name_path[0] if event_name_path else None
    timestamp_field = timestamp_path[0] if timestamp_path else None
    id_field = id_path[0] if id_path else None
    customer_key, value_key = mapper._customer_key, mapper._value_key
    all_dimensions = mapper._all_dimensions
    listed_dimensions = bool(mapper._dimensions)
    not_dimensions = mapper._not_dimensions
    copy_dimensions = mapper._copy_dimensions
    record_id_text = mapper._record_id
    general_timestamp = mapper._timestamp
    from_iso = datetime.fromisoformat
    shapes: dict[tuple[Any, ...], tuple[Any, ...]] = {}

    def map_record(
        record: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        kafka_timestamp_ms: int | None,
    ) -> list[MeterEventBody]:
        if type(record) is not dict:  # decode() guarantees it; a caller may not
            _fail("schema_violation", f"record is {kind_of(record)}, not a JSON object")
        if flat:
            get = record.get
            customer = get(customer_field)
            value = get(value_field)
            event_name = get(event_name_field) if event_name_field is not None else None
            timestamp = get(timestamp_field) if timestamp_field is not None else None
            record_id = get(id_field) if id_field is not None else None
        else:
            customer = _dig(record, customer_path)
            value = _dig(record, value_path)
            event_name = _dig(record, event_name_path) if event_name_path else None
            timestamp = _dig(record, timestamp_path) if timestamp_path else None
            record_id = _dig(record, id_path) if id_path else None

        # Each field: the common valid case inline, anything else through the helper that
        # explains it (same order as ever, so the first problem found is the one reported).
        if constant_event_name is not None:
            name = constant_event_name
        else:
            name = event_name.strip() if type(event_name) is str else ""
            if not name or len(name) > MAX_EVENT_NAME_LENGTH:
                name = _text(event_name, "event name", event_name_dotted, MAX_EVENT_NAME_LENGTH)
        who = customer.strip() if type(customer) is str else ""
        if not who or len(who) > MAX_CUSTOMER_LENGTH:
            who = _text(customer, "customer", customer_dotted, MAX_CUSTOMER_LENGTH)
        if type(value) is int and 0 <= value < _VALUE_LIMIT:
            amount = str(value)
        else:
            amount = _whole_number(value, value_dotted, allow_negative)
        payload = {customer_key: who, value_key: amount}
        if all_dimensions:
            # Every top-level string field that is not mapped, in the record's order.
            shape = tuple(record)
            keys = shapes.get(shape)
            if keys is None:
                keys = tuple(key for key in shape if key not in not_dimensions)
                if len(shapes) < _MAX_SHAPES:
                    shapes[shape] = keys
            for key in keys:
                text = record[key]
                if isinstance(text, str):
                    if len(text) > MAX_PAYLOAD_VALUE_LENGTH or len(key) > MAX_PAYLOAD_KEY_LENGTH:
                        _check_dimension(key, text)  # explains why, and refuses
                    payload[key] = text
            if len(payload) > MAX_PAYLOAD_KEYS:
                _fail(
                    "record_too_large",
                    f"{len(payload) - 2} dimension fields, over the "
                    f"{MAX_PAYLOAD_KEYS - 2} a meter event may carry",
                )
        elif listed_dimensions:
            copy_dimensions(record, payload)

        if type(record_id) is str and record_id and len(record_id) <= MAX_IDENTIFIER_LENGTH:
            identifier = (
                record_id
                if record_id.isascii()
                else identifier_for(record_id, topic=topic, partition=partition, offset=offset)
            )
        elif record_id is not None:
            record_id = record_id_text(record_id)
            if len(record_id) <= MAX_IDENTIFIER_LENGTH and record_id.isascii():  # as it is
                identifier = record_id
            else:
                identifier = identifier_for(
                    record_id, topic=topic, partition=partition, offset=offset
                )
        else:
            identifier = identifier_for(None, topic=topic, partition=partition, offset=offset)

        # The wire shape YYYY-MM-DDTHH:MM:SS.mmmZ is sent as it is, if valid and in the
        # window; anything else takes the general path (which explains a refusal).
        stamp: str | None = None
        if (
            type(timestamp) is str
            and len(timestamp) == 24
            and timestamp[23] == "Z"
            and timestamp[4:20:3] == "--T::."
        ):
            try:
                epoch = from_iso(timestamp).timestamp()
            except ValueError:
                pass
            else:
                now = clock()
                if now - STRIPE_MAX_AGE_SECONDS <= epoch <= now + STRIPE_MAX_FUTURE_SECONDS:
                    stamp = timestamp
        elif (type(timestamp) is float or type(timestamp) is int) and (
            -_EPOCH_FAST_LIMIT < timestamp < _EPOCH_FAST_LIMIT  # not NaN, inf or a huge int
        ):
            # Epoch seconds or milliseconds, as parse_timestamp reads them, when in the window.
            epoch = float(timestamp)
            if abs(epoch) >= MILLISECONDS_THRESHOLD:
                epoch /= 1000.0
            now = clock()
            if now - STRIPE_MAX_AGE_SECONDS <= epoch <= now + STRIPE_MAX_FUTURE_SECONDS:
                stamp = format_rfc3339_ms(epoch)
        if stamp is None:
            stamp = general_timestamp(timestamp, kafka_timestamp_ms)
        return [
            {
                "event_name": name,
                "identifier": identifier,
                "timestamp": stamp,
                "payload": payload,
            }
        ]

    return map_record


# -- helpers (module level: no attribute lookups on the hot path) ---------------------------


def _split(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def _dig(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path``, or None when any step is missing or not an object."""
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(raw: object, what: str, dotted: str, max_length: int) -> str:
    """A required, non-empty string field (stripped), within ``max_length`` characters."""
    if isinstance(raw, str):
        text = raw.strip()
        if text and len(text) <= max_length:
            return text
        if not text:
            _fail("mapping_error", f"{what} at '{dotted}' is empty")
        _fail(
            "record_too_large",
            f"{what} at '{dotted}' is {len(text)} characters, over {max_length}: {_show(text)}",
        )
    if raw is None:
        _fail("mapping_error", f"{what} is missing (no value at '{dotted}')")
    return _fail(
        "schema_violation",
        f"{what} at '{dotted}' must be a string, not {kind_of(raw)}: {_show(raw)}",
    )


def _whole_number(raw: object, dotted: str, allow_negative: bool) -> str:
    """The value as Stripe wants it: a plain decimal string of at most 15 digits."""
    if type(raw) is int:  # not isinstance: a boolean is not a number of anything
        number = raw
    elif isinstance(raw, str):
        return _whole_number_text(raw, dotted, allow_negative)
    elif type(raw) is float and raw.is_integer():  # 25.0 is 25; NaN and inf are not integers
        number = int(raw)
    elif raw is None:
        _fail("mapping_error", f"value is missing (no value at '{dotted}')")
    else:
        _fail(
            "invalid_value",
            f"value at '{dotted}' must be a whole number, not {kind_of(raw)}: {_show(raw)}",
        )
    if not -_VALUE_LIMIT < number < _VALUE_LIMIT:
        _fail("invalid_value", f"value at '{dotted}' has more than 15 digits: {_show(raw)}")
    if number < 0 and not allow_negative:
        _fail(
            "invalid_value",
            f"value at '{dotted}' is negative ({number}); set mapping.allow_negative_values "
            "to accept corrections",
        )
    return str(number)


def _whole_number_text(raw: str, dotted: str, allow_negative: bool) -> str:
    negative = raw[:1] == "-"
    digits = raw[1:] if negative else raw
    if not digits or not digits.isascii() or not digits.isdigit():
        _fail(
            "invalid_value",
            f"value at '{dotted}' is not a whole number (digits, optional leading '-'): "
            f"{_show(raw)}",
        )
    significant = digits.lstrip("0")
    if len(significant) > MAX_VALUE_DIGITS:
        _fail("invalid_value", f"value at '{dotted}' has more than 15 digits: {_show(raw)}")
    if not significant:
        return "0"
    if negative:
        if not allow_negative:
            _fail(
                "invalid_value",
                f"value at '{dotted}' is negative ({_show(raw)}); set "
                "mapping.allow_negative_values to accept corrections",
            )
        return "-" + significant
    return significant


def _check_dimension(key: str, value: str, dotted: str | None = None) -> None:
    if len(value) > MAX_PAYLOAD_VALUE_LENGTH:
        _fail(
            "record_too_large",
            f"dimension '{dotted or key}' is {len(value)} characters, over "
            f"{MAX_PAYLOAD_VALUE_LENGTH}: {_show(value)}",
        )
    if len(key) > MAX_PAYLOAD_KEY_LENGTH:
        _fail(
            "record_too_large",
            f"dimension name {_show(key)} is {len(key)} characters, over {MAX_PAYLOAD_KEY_LENGTH}",
        )


def _fail(reason: DeadLetterReason, message: str) -> NoReturn:
    raise RecordError(reason, message)


def kind_of(value: object) -> str:
    """What a decoded value is, as refusal messages say it ("a string", "an object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _show(value: object) -> str:
    """A bad value, quoted and abbreviated: enough to find it, never a whole payload."""
    if isinstance(value, dict | list):
        return f"{kind_of(value)} of {len(value)} items"
    if isinstance(value, str):
        if len(value) > _SHOWN_CHARACTERS:
            return repr(value[:_SHOWN_CHARACTERS]) + f"... ({len(value)} characters)"
        return repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS] + "..."


def _when(epoch: float) -> str:
    try:
        return format_rfc3339_ms(epoch)
    except (ValueError, OverflowError):
        return f"(epoch {epoch:g} s)"


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    if seconds >= 60:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds:.3f} s"
