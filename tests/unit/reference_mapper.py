"""The mapper and record decoder as they were before the CPU work (issue 12): a test oracle.

A frozen copy of ``connector/mapping.py`` and ``connector.records.decode`` at the commit
before they were rewritten for speed, so ``test_mapping_differential`` can prove the fast
versions keep every event body and every refusal (reason and message) identical. Never
import it from the package; never "fix" it: it is the behaviour to keep. The rules are
documented in ``connector/mapping.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypedDict

import orjson

from connector.config import MappingConfig
from connector.errors import ConfigError, DeadLetterReason, RecordError
from connector.identifiers import MAX_IDENTIFIER_LENGTH, identifier_for
from connector.timestamps import (
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
#: Field names of the canonical usage record: never copied as dimensions.
CANONICAL_FIELDS = frozenset({"id", "customer", "event_name", "value", "timestamp"})
#: Bad values are quoted in messages up to this many characters.
_SHOWN_CHARACTERS = 40


class MeterEventBody(TypedDict):
    """One event exactly as Stripe's meter_event_stream takes it."""

    event_name: str
    identifier: str
    timestamp: str
    payload: dict[str, str]


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
            CANONICAL_FIELDS | payload_keys | {p[0] for p in mapped_paths if p}
        )
        # The fast path: every path a top-level key, one event per record.
        self._flat = all(p is None or len(p) == 1 for p in mapped_paths) and not self._meters
        self._check(config, payload_keys)

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
        counts as absent.
        """
        if type(record) is not dict:  # decode() guarantees it; a caller may not
            _fail("schema_violation", f"record is {_kind(record)}, not a JSON object")
        if self._meters:
            return self._map_fan_out(record, topic, partition, offset, kafka_timestamp_ms)
        if self._flat:
            get = record.get
            customer = get(self._customer_path[0])
            value = get(self._value_path[0])
            event_name = get(self._event_name_path[0]) if self._event_name_path else None
            timestamp = get(self._timestamp_path[0]) if self._timestamp_path else None
            record_id = get(self._id_path[0]) if self._id_path else None
        else:
            customer = _dig(record, self._customer_path)
            value = _dig(record, self._value_path)
            event_name = _dig(record, self._event_name_path) if self._event_name_path else None
            timestamp = _dig(record, self._timestamp_path) if self._timestamp_path else None
            record_id = _dig(record, self._id_path) if self._id_path else None

        # Each field: the common valid case inline, anything else through the helper that
        # explains it (same order as ever, so the first problem found is the one reported).
        if self._constant_event_name is not None:
            name = self._constant_event_name
        else:
            name = event_name.strip() if type(event_name) is str else ""
            if not name or len(name) > MAX_EVENT_NAME_LENGTH:
                name = _text(
                    event_name, "event name", self._event_name_dotted, MAX_EVENT_NAME_LENGTH
                )
        who = customer.strip() if type(customer) is str else ""
        if not who or len(who) > MAX_CUSTOMER_LENGTH:
            who = _text(customer, "customer", self._customer_dotted, MAX_CUSTOMER_LENGTH)
        if type(value) is int and 0 <= value < _VALUE_LIMIT:
            amount = str(value)
        else:
            amount = _whole_number(value, self._value_dotted, self._allow_negative)
        payload = {self._customer_key: who, self._value_key: amount}
        if self._all_dimensions:
            self._copy_string_fields(record, payload)
        elif self._dimensions:
            self._copy_dimensions(record, payload)

        if type(record_id) is str and record_id and len(record_id) <= MAX_IDENTIFIER_LENGTH:
            identifier = (
                record_id
                if record_id.isascii()
                else identifier_for(record_id, topic=topic, partition=partition, offset=offset)
            )
        elif record_id is not None:
            record_id = self._record_id(record_id)
            if len(record_id) <= MAX_IDENTIFIER_LENGTH and record_id.isascii():  # as it is
                identifier = record_id
            else:
                identifier = identifier_for(
                    record_id, topic=topic, partition=partition, offset=offset
                )
        else:
            identifier = identifier_for(None, topic=topic, partition=partition, offset=offset)

        stamp: str | None = None
        if type(timestamp) is str:
            epoch = wire_epoch(timestamp)  # the wire shape: sent as it is, if in the window
            if epoch is not None:
                now = self._clock()
                if now - STRIPE_MAX_AGE_SECONDS <= epoch <= now + STRIPE_MAX_FUTURE_SECONDS:
                    stamp = timestamp
        if stamp is None:
            stamp = self._timestamp(timestamp, kafka_timestamp_ms)
        return [
            {
                "event_name": name,
                "identifier": identifier,
                "timestamp": stamp,
                "payload": payload,
            }
        ]

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
            f"id at '{self._id_dotted}' must be a string or an integer, not {_kind(raw)}: "
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
                    f"not {_kind(value)}",
                )
            _check_dimension(key, text, dotted)
            payload[key] = text


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
        "schema_violation", f"{what} at '{dotted}' must be a string, not {_kind(raw)}: {_show(raw)}"
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
            f"value at '{dotted}' must be a whole number, not {_kind(raw)}: {_show(raw)}",
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


def _kind(value: object) -> str:
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
        return f"{_kind(value)} of {len(value)} items"
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


def wire_epoch(text: str) -> float | None:
    """``connector.timestamps.wire_epoch`` as it was."""
    if (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
    ):
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            return None
    return None


# -- records.decode, as it was -------------------------------------------------------------

_JSON_TYPE_NAMES: dict[type, str] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def decode(value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The record's JSON object; RecordError (with its dead-letter reason) otherwise.

    The size is checked before parsing, so an oversized record costs nothing to refuse.
    A null value (a tombstone) or an empty one is ``invalid_json``; valid JSON that is not
    an object is ``schema_violation``.
    """
    if value is None:
        raise RecordError("invalid_json", "record has no value (null, e.g. a tombstone)")
    size = len(value)
    if size > max_bytes:
        raise RecordError(
            "record_too_large",
            f"record value is {size} bytes, over records.max_bytes ({max_bytes})",
        )
    if not size:
        raise RecordError("invalid_json", "record value is empty")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson's message names the problem and its position, never the content.
        raise RecordError("invalid_json", f"record value is not valid JSON: {exc}") from None
    if type(record) is not dict:
        kind = _JSON_TYPE_NAMES.get(type(record), type(record).__name__)
        raise RecordError("schema_violation", f"record is {kind}, not a JSON object")
    return record
