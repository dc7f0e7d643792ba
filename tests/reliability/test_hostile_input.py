"""Hostile input: never a crash, each bad record dead-lettered with its reason, good ones billed.

Records come from hypothesis strategies (bytes that are not UTF-8, not JSON, JSON that is
not an object, deep nesting, huge strings and records, wrong types, NaN/Infinity, negative,
fractional and 16+ digit values, missing and empty fields, timestamps on both sides of
every edge of Stripe's window in odd time zones, keys and headers of every shape), plus a
fixed catalogue of edge cases so that every category is in every run. Each record's
expected fate comes from ``oracle`` below: an independent reading of the documented rules
(the README's record and dead-letter tables, the mapping and timestamp rules in the module
docs, and Stripe's contract), written here without calling ``connector.mapping``.

Running the real connector per hypothesis example would be far too slow, so each example is
a whole batch: a few hundred records produced at once, one burst-mode run, then every
record's fate checked against the oracle. Shrinking is off (every step would be a connector
run); a failure names the offending records instead.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from meterstream_local.emulator.meters import Meter
from tests.reliability.report import ScenarioRow
from tests.reliability.world import (
    Outgoing,
    Position,
    ReliabilityWorld,
    WorldFactory,
    letter_headers,
    produce_exactly,
    read_all,
)

pytestmark = pytest.mark.integration


#: records.max_bytes for these runs: small, so "huge" records stay cheap to produce.
MAX_BYTES = 8192
#: Records hypothesis draws per example (one connector run each, plus the catalogue), and
#: examples per test run: a draw of many records must fit hypothesis's choice buffer.
BATCH = 80
EXAMPLES = 4
#: A run takes well under this; timestamps are generated at least this far from a moving
#: edge of Stripe's window, so the verdict cannot change while the batch is in flight.
RUN_BUDGET_SECONDS = 150.0

DAY = 86_400.0
#: Stripe's window, as stripe-contract.md states it.
STRIPE_MAX_AGE = 35 * DAY
STRIPE_MAX_FUTURE = 300.0
#: Documented limits (README "Records and mapping", connector module docs).
MAX_VALUE_DIGITS = 15
MAX_EVENT_NAME = 100
MAX_CUSTOMER = 255
MAX_DIMENSION_VALUE = 500
MAX_DIMENSION_KEY = 100
MAX_DIMENSIONS = 48
#: JSON nesting deeper than this is refused by the parser (a bound any safe parser has).
MAX_DEPTH = 1024
CANONICAL = frozenset({"id", "customer", "event_name", "value", "timestamp"})
PAYLOAD_KEYS = frozenset({"stripe_customer_id", "value"})

# --------------------------------------------------------------------------- the oracle


@dataclass(frozen=True)
class Billed:
    """A good record: billed once as ``value`` on (meter, customer)."""

    meter: str
    customer: str
    value: int


Fate = Billed | frozenset[str]

_RFC3339 = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
_NUMERIC = re.compile(r"^-?[0-9]+(\.[0-9]+)?$")


class _Refused(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise _Refused(name)  # NaN, Infinity, -Infinity are not JSON


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects, strings skipped."""
    deepest = depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _has_infinity(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_infinity(v) for v in value)
    if isinstance(value, dict):
        return any(_has_infinity(v) for v in value.values())
    return False


def _epoch_of(raw: Any) -> float | None:
    """Epoch seconds of a record timestamp, or None when it is not a valid one."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float) or (isinstance(raw, str) and _NUMERIC.match(raw)):
        number = float(raw)
    elif isinstance(raw, str) and (match := _RFC3339.match(raw)):
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        offset = match.group(8)
        if second > 59 or hour > 23 or minute > 59:
            return None
        if offset in ("Z", "z"):
            tz = UTC
        else:
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                return None
            sign = -1 if offset[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        try:
            moment = datetime(year, month, day, hour, minute, second, tzinfo=tz)
        except ValueError:
            return None
        fraction = match.group(7)
        return moment.timestamp() + (float("0" + fraction) if fraction else 0.0)
    else:
        return None
    if not math.isfinite(number):
        return None
    # Epoch milliseconds from 1e11 up (1e11 s is the year 5138; 1e11 ms is 1973).
    return number / 1000.0 if abs(number) >= 1e11 else number


def _whole(raw: Any) -> int | str:
    """The value as an int, or the dead-letter reason."""
    if raw is None:
        return "mapping_error"
    if isinstance(raw, bool):
        return "invalid_value"
    if isinstance(raw, float):
        if not raw.is_integer():
            return "invalid_value"
        raw = int(raw)
    if isinstance(raw, int):
        if len(str(abs(raw))) > MAX_VALUE_DIGITS or raw < 0:
            return "invalid_value"
        return raw
    if isinstance(raw, str):
        digits = raw[1:] if raw.startswith("-") else raw
        if not digits or not all("0" <= c <= "9" for c in digits):
            return "invalid_value"
        significant = digits.lstrip("0")
        if len(significant) > MAX_VALUE_DIGITS:
            return "invalid_value"
        if raw.startswith("-") and significant:
            return "invalid_value"  # negative values need mapping.allow_negative_values
        return int(significant or "0")
    return "invalid_value"  # arrays, objects


def _text_field(raw: Any, limit: int) -> str | tuple[str]:
    """A required string field: the stripped text, or (reason,)."""
    if raw is None:
        return ("mapping_error",)
    if not isinstance(raw, str):
        return ("schema_violation",)
    text = raw.strip()
    if not text:
        return ("mapping_error",)
    if len(text) > limit:
        return ("record_too_large",)
    return text


def oracle(value: bytes | None, kafka_ms: int | None, now_from: float, now_to: float) -> Fate:
    """What must become of a record produced between ``now_from`` and ``now_to``.

    A good record's ``Billed``, or the set of dead-letter reasons that fit it (every fault
    it has: the connector may report any one of them).
    """
    if not value:
        return frozenset({"invalid_json"})  # a tombstone or an empty value
    if len(value) > MAX_BYTES:
        return frozenset({"record_too_large"})  # refused before it is parsed
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return frozenset({"invalid_json"})
    if text.startswith("\ufeff") or _depth(text) > MAX_DEPTH:
        return frozenset({"invalid_json"})
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, _Refused, RecursionError):
        return frozenset({"invalid_json"})
    if _has_surrogate(record) or _has_infinity(record):
        return frozenset({"invalid_json"})  # not representable in UTF-8 / a double
    if not isinstance(record, dict):
        return frozenset({"schema_violation"})

    reasons: set[str] = set()
    name = _text_field(record.get("event_name"), MAX_EVENT_NAME)
    customer = _text_field(record.get("customer"), MAX_CUSTOMER)
    amount = _whole(record.get("value"))
    for field_verdict in (name, customer):
        if isinstance(field_verdict, tuple):
            reasons.add(field_verdict[0])
    if isinstance(amount, str):
        reasons.add(amount)

    dimensions = 0
    for key, item in record.items():
        if isinstance(item, str) and key not in CANONICAL and key not in PAYLOAD_KEYS:
            dimensions += 1
            if len(item) > MAX_DIMENSION_VALUE or len(key) > MAX_DIMENSION_KEY:
                reasons.add("record_too_large")
    if dimensions > MAX_DIMENSIONS:
        reasons.add("record_too_large")

    record_id = record.get("id")
    if record_id == "":
        reasons.add("mapping_error")
    elif record_id is not None and not isinstance(record_id, str) and type(record_id) is not int:
        reasons.add("schema_violation")  # floats, booleans, arrays, objects

    raw_time = record.get("timestamp")
    earliest: float | None
    latest: float | None
    if raw_time is None:
        if kafka_ms is not None and kafka_ms > 0:
            earliest = latest = kafka_ms / 1000.0
        else:  # stamped by the producer or the connector: now
            earliest, latest = now_from, now_to
    else:
        earliest = latest = _epoch_of(raw_time)
        if earliest is None:
            reasons.add("schema_violation")
    if earliest is not None and latest is not None:
        # Outside for every moment of the run: out of range. Inside for every moment:
        # fine. Both (only near a moving edge, which the strategies avoid): either.
        outside_always = earliest < now_from - STRIPE_MAX_AGE or latest > now_to + STRIPE_MAX_FUTURE
        inside_always = (
            earliest >= now_to - STRIPE_MAX_AGE and latest <= now_from + STRIPE_MAX_FUTURE
        )
        if outside_always:
            reasons.add("timestamp_out_of_range")
        elif not inside_always:
            raise AssertionError(f"timestamp {raw_time!r} too close to a window edge to judge")

    if reasons:
        return frozenset(reasons)
    assert isinstance(name, str)
    assert isinstance(customer, str)
    assert isinstance(amount, int)
    return Billed(name, customer, amount)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim (NaN, lone surrogates, 1e400, ...)."""

    text: str


@dataclass(frozen=True)
class Unique:
    """A string made unique per record: ``{n}`` becomes the record's number."""

    template: str


@dataclass(frozen=True)
class IntId:
    """An integer id, unique per record (an offset keeps it clear of small integers)."""

    base: int = 7_000_000_000


@dataclass(frozen=True)
class At:
    """A time relative to the moment the batch is produced, in one of the accepted forms."""

    seconds: float
    form: str = "rfc3339"
    offset_minutes: int = 0
    fraction_digits: int = 3
    lower: bool = False
    negative_zero: bool = False

    def render(self, now: float) -> Any:
        epoch = now + self.seconds
        if self.form == "epoch_s":
            return int(epoch)
        if self.form == "epoch_s_float":
            return round(epoch, 3)
        if self.form == "epoch_ms":
            return int(epoch * 1000)
        if self.form == "numeric_string":
            return str(int(epoch))
        if self.form == "numeric_string_ms":
            return str(int(epoch * 1000))
        local = datetime.fromtimestamp(epoch, UTC) + timedelta(minutes=self.offset_minutes)
        text = local.strftime("%Y-%m-%dT%H:%M:%S")
        if self.fraction_digits:
            micros = f"{local.microsecond:06d}"
            text += "." + (micros + "123")[: self.fraction_digits]
        if self.offset_minutes == 0 and not self.negative_zero:
            zone = "Z"
        else:
            sign = "-" if self.offset_minutes < 0 or self.negative_zero else "+"
            hours, minutes = divmod(abs(self.offset_minutes), 60)
            zone = f"{sign}{hours:02d}:{minutes:02d}"
        text += zone
        return text.replace("T", "t").replace("Z", "z") if self.lower else text


@dataclass(frozen=True)
class Doc:
    """A JSON document (dict, list, scalar) with Raw/Unique/At placeholders."""

    body: Any
    ensure_ascii: bool = False


@dataclass(frozen=True)
class Spec:
    """One hostile record before rendering."""

    value: Doc | bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    #: Kafka CreateTime relative to production (seconds); None: stamped by the producer.
    kafka_seconds: float | None = None
    note: str = ""

    def __repr__(self) -> str:
        # Short: hypothesis prints whole batches of these when an example fails.
        size = len(self.value) if isinstance(self.value, bytes) else None
        return f"Spec({self.note or 'catalogue'}, bytes={size}, kafka={self.kafka_seconds})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis's printer would otherwise list every field


def _dump(node: Any, n: int, now: float, ascii_only: bool) -> str:
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, IntId):
        return str(node.base + n)
    if isinstance(node, Unique):
        return json.dumps(node.template.replace("{n}", str(n)), ensure_ascii=ascii_only)
    if isinstance(node, At):
        return json.dumps(node.render(now), ensure_ascii=ascii_only)
    if isinstance(node, dict):
        items = (
            f"{json.dumps(k, ensure_ascii=ascii_only)}:{_dump(v, n, now, ascii_only)}"
            for k, v in node.items()
        )
        return "{" + ",".join(items) + "}"
    if isinstance(node, list | tuple):
        return "[" + ",".join(_dump(v, n, now, ascii_only) for v in node) + "]"
    return json.dumps(node, ensure_ascii=ascii_only)


def render(spec: Spec, n: int, now: float) -> Outgoing:
    if isinstance(spec.value, Doc):
        value: bytes | None = _dump(spec.value.body, n, now, spec.value.ensure_ascii).encode()
    else:
        value = spec.value
    kafka_ms = None if spec.kafka_seconds is None else int((now + spec.kafka_seconds) * 1000)
    return Outgoing(key=spec.key, value=value, headers=spec.headers, timestamp_ms=kafka_ms)


# --------------------------------------------------------------------------- strategies

#: Offsets (minutes) of odd but real time zones, and the extremes RFC 3339 allows.
ODD_ZONES = (0, 345, -570, 330, 840, -720, 525, -60, 1439, -1439)
#: Seconds from now that are safely inside the window, however long the run takes.
INSIDE = st.one_of(
    st.floats(-34 * DAY, STRIPE_MAX_FUTURE - 2),  # rounding to ms stays inside
    st.just(-STRIPE_MAX_AGE + RUN_BUDGET_SECONDS + 60),  # near the past edge, inside
    st.just(STRIPE_MAX_FUTURE - 1.0),  # near the future edge, inside
)
#: Seconds from now that are outside the window for the whole run.
OUTSIDE = st.one_of(
    st.floats(-3650 * DAY, -STRIPE_MAX_AGE - 1),
    st.just(-STRIPE_MAX_AGE - 1.0),  # just beyond the past edge
    st.just(STRIPE_MAX_FUTURE + RUN_BUDGET_SECONDS + 60),  # just beyond the future edge
    st.floats(STRIPE_MAX_FUTURE + RUN_BUDGET_SECONDS + 60, 400 * DAY),
)
TIME_FORMS = st.sampled_from(
    ["rfc3339", "epoch_s", "epoch_s_float", "epoch_ms", "numeric_string", "numeric_string_ms"]
)


def times(seconds: st.SearchStrategy[float]) -> st.SearchStrategy[At]:
    return st.builds(
        At,
        seconds=seconds,
        form=TIME_FORMS,
        offset_minutes=st.sampled_from(ODD_ZONES),
        fraction_digits=st.sampled_from([0, 1, 3, 6, 9]),
        lower=st.booleans(),
        negative_zero=st.booleans(),
    )


BAD_TIME_TEXT = st.sampled_from(
    [
        "",
        "yesterday",
        "2024-06-01",  # a date, not a date-time
        "2024-06-01T12:00:00",  # no offset
        "2024-06-01 12:00:00Z",  # space separator
        "20240601T120000Z",  # ISO 8601 basic
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-06-01T24:00:00Z",
        "2024-06-01T12:00:60Z",  # leap second
        "2024-06-01T12:00:00+24:00",
        "1e9",
        "0x6650",
        "١٧١٧٢٤٣٢٠٠",  # Arabic-Indic digits
        "NaN",
    ]
)
WHITESPACE = st.sampled_from(["", " ", "\t", "\n", "\u00a0", "\u3000", " \u2003 "])
METER_NAMES = st.one_of(
    st.sampled_from(["api_requests", "llm_tokens", "storage_gb_hours"]),
    st.text(st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=12),
)
GOOD_VALUES = st.one_of(
    st.integers(0, 10**MAX_VALUE_DIGITS - 1),
    st.integers(0, 10**6).map(str),
    st.integers(0, 999).map(lambda v: "000000000000000000" + str(v)),  # leading zeros
    st.sampled_from([25.0, 1e2, -0.0, 0, "0", "-0", 999999999999999]),
)
BAD_VALUES = st.one_of(
    st.integers(-(10**20), -1),
    st.integers(10**MAX_VALUE_DIGITS, 10**30),
    st.integers(10**MAX_VALUE_DIGITS, 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.sampled_from(
        [
            True,
            False,
            "",
            " 5",
            "5 ",
            "+5",
            "1e3",
            "2.5",
            "NaN",
            "Infinity",
            "0x10",
            "٣",
            "-3",
            [],
            {},
            [1],
            {"amount": 1},
            1e16,
            Raw("NaN"),
            Raw("Infinity"),
            Raw("-Infinity"),
            Raw("1e400"),
        ]
    ),
)
BAD_TEXT_FIELD = st.sampled_from([None, "", "   ", "\u3000", 7, 0, True, [], {}, ["cus_1"]])
KEYS = st.one_of(
    st.none(),
    st.just(b""),
    st.binary(max_size=16),
    st.integers(100, 3000).map(lambda n: b"k" * n),
    st.text(max_size=8).map(str.encode),
)
HEADERS = st.lists(
    st.tuples(
        st.one_of(
            # Names as a producer can write them: no NUL (librdkafka takes names as C strings
            # and cuts them there) and no lone surrogate (not UTF-8; confluent-kafka even
            # crashes the producing process on one).
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                max_size=8,
            ),
            st.sampled_from(["meterstream.reason", "meterstream.source.offset", "id", ""]),
        ),
        st.one_of(st.none(), st.binary(max_size=10), st.just(b"\xff\xfe")),
    ),
    max_size=3,
).map(tuple)
#: Extra top-level fields that do not change a record's fate (non-strings are ignored).
HARMLESS_EXTRAS = st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda k: k not in CANONICAL | PAYLOAD_KEYS),
    st.one_of(
        st.text(max_size=16),
        st.integers(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
        st.integers(1, 300).map(lambda d: Raw("[" * d + "]" * d)),  # nested, within bounds
        st.just({"nested": {"deeper": {"customer": "cus_not_me"}}}),
    ),
    max_size=2,
)


@st.composite
def good_records(draw: st.DrawFn) -> dict[str, Any]:
    """A canonical record that must be billed, in one of its many legitimate shapes."""
    pad = draw(WHITESPACE)
    customer = Unique(
        pad + "cus_" + draw(st.sampled_from(["", "Zürich_", "東京_", "x"])) + "{n}" + pad
    )
    body: dict[str, Any] = {
        "customer": customer,
        "event_name": draw(WHITESPACE) + draw(METER_NAMES) + draw(WHITESPACE),
        "value": draw(GOOD_VALUES),
    }
    body.update(draw(HARMLESS_EXTRAS))
    ident = draw(st.sampled_from(["string", "long", "unicode", "int", "absent", "null"]))
    if ident == "string":
        body["id"] = Unique("id-{n}")
    elif ident == "long":
        body["id"] = Unique("long-{n}-" + "x" * 150)  # over 100 characters: hashed
    elif ident == "unicode":
        body["id"] = Unique("ïd-{n}-€")
    elif ident == "int":
        body["id"] = IntId()
    elif ident == "null":
        body["id"] = None
    stamp = draw(st.sampled_from(["record", "absent", "null"]))
    if stamp == "record":
        body["timestamp"] = draw(times(INSIDE))
    elif stamp == "null":
        body["timestamp"] = None
    return body


@st.composite
def cases(draw: st.DrawFn) -> Spec:
    """One record, good or hostile, with a key and headers of any shape."""
    key = draw(KEYS)
    headers = draw(HEADERS)
    kind = draw(
        st.sampled_from(
            [
                "good",
                "good",
                "good",
                "good",
                "good_kafka_time",
                "not_utf8",
                "not_json",
                "not_object",
                "deep",
                "huge",
                "big_field",
                "bad_value",
                "bad_customer",
                "bad_event_name",
                "bad_time",
                "time_outside",
                "kafka_time_outside",
                "bad_id",
                "surrogate",
                "many_dimensions",
                "tombstone",
            ]
        )
    )
    body = draw(good_records())
    kafka: float | None = None
    value: Doc | bytes | None
    if kind in ("good", "bad_value", "bad_customer", "bad_event_name", "bad_time", "bad_id"):
        if kind == "bad_value":
            body["value"] = draw(BAD_VALUES)
        elif kind == "bad_customer":
            body["customer"] = draw(BAD_TEXT_FIELD | st.just("c" * 300))
        elif kind == "bad_event_name":
            body["event_name"] = draw(BAD_TEXT_FIELD | st.just("e" * 101))
        elif kind == "bad_time":
            body["timestamp"] = draw(BAD_TIME_TEXT | st.sampled_from([True, {}, [], {"at": 1}]))
        elif kind == "bad_id":
            body["id"] = draw(st.sampled_from(["", 1.5, True, [], {"id": 1}, 2.0]))
        value = Doc(body, ensure_ascii=draw(st.booleans()))
    elif kind == "good_kafka_time":
        body.pop("timestamp", None)
        kafka = draw(st.floats(-34 * DAY, 120.0))
        value = Doc(body)
    elif kind == "time_outside":
        body["timestamp"] = draw(times(OUTSIDE))
        value = Doc(body)
    elif kind == "kafka_time_outside":
        body.pop("timestamp", None)
        kafka = draw(st.floats(-60 * DAY, -STRIPE_MAX_AGE - 1))
        value = Doc(body)
    elif kind == "not_utf8":
        raw = draw(st.binary(min_size=1, max_size=200))
        value = draw(
            st.sampled_from(
                [
                    raw + b"\xff",
                    b'{"customer": "cus_\xc3\x28", "event_name": "api_requests", "value": 1}',
                    b"\xef\xbb\xbf" + b'{"customer": "cus_1", "event_name": "e", "value": 1}',
                    b'{"customer": "cus_1", "event_name": "e", "value": 1, "x": "\xed\xa0\x80"}',
                ]
            )
        )
    elif kind == "not_json":
        value = draw(
            st.one_of(
                st.text(min_size=1, max_size=60).map(str.encode),
                st.sampled_from(
                    [
                        b'{"customer": "cus_1", ',
                        b"{'customer': 'cus_1'}",
                        b'{"customer": "cus_1",}',
                        b'{"value": 01}',
                        b"customer=cus_1&value=3",
                        b"<usage/>",
                        b"   ",
                        b'{"a": 1}{"b": 2}',
                        b"\x00",
                    ]
                ),
            )
        )
    elif kind == "not_object":
        value = Doc(
            draw(
                st.one_of(
                    st.lists(st.integers(), max_size=3),
                    st.text(max_size=10),
                    st.integers(),
                    st.booleans(),
                    st.none(),
                    st.just([body]),
                )
            )
        )
    elif kind == "deep":
        depth = draw(st.sampled_from([1100, 2000, 3500]))
        body["deep"] = Raw("[" * depth + "]" * depth)
        value = Doc(body)
    elif kind == "huge":
        size = draw(st.integers(MAX_BYTES + 1, 4 * MAX_BYTES))
        value = draw(
            st.sampled_from(
                [
                    b'{"customer": "cus_1", "event_name": "e", "value": 1, "pad": "'
                    + b"x" * size
                    + b'"}',
                    b"\x00\xff" * (size // 2 + 1),
                ]
            )
        )
    elif kind == "big_field":
        which = draw(st.sampled_from(["dimension", "dimension_key", "customer", "event_name"]))
        if which == "dimension":
            body["region"] = "r" * draw(st.integers(MAX_DIMENSION_VALUE + 1, 3000))
        elif which == "dimension_key":
            body["k" * draw(st.integers(MAX_DIMENSION_KEY + 1, 300))] = "eu"
        elif which == "customer":
            body["customer"] = Unique("cus_{n}" + "c" * MAX_CUSTOMER)
        else:
            body["event_name"] = "e" * draw(st.integers(MAX_EVENT_NAME + 1, 400))
        value = Doc(body)
    elif kind == "surrogate":
        body["note"] = Raw(draw(st.sampled_from(['"\\ud800"', '"x\\udfff"', '"\\ud83d"'])))
        value = Doc(body)
    elif kind == "many_dimensions":
        count = draw(st.integers(MAX_DIMENSIONS + 1, 80))
        for index in range(count):
            body[f"dim{index}"] = "v"
        value = Doc(body)
    else:  # tombstone
        value = None
    return Spec(value=value, key=key, headers=headers, kafka_seconds=kafka, note=kind)


def _canonical(**fields: Any) -> Doc:
    """A canonical record for a unique customer, with ``fields`` changed (None: removed)."""
    body: dict[str, Any] = {"customer": Unique("cus_{n}"), "event_name": "api_requests"}
    body["value"] = 1
    for name, value in fields.items():
        if value is None:
            body.pop(name, None)
        else:
            body[name] = value
    return Doc(body)


#: Every category, every run: the edges hypothesis might not draw in a few hundred records.
CATALOGUE: tuple[Spec, ...] = (
    Spec(None, note="tombstone"),
    Spec(b"", note="empty"),
    Spec(b"\xff\xfe\xfd", note="not utf-8"),
    Spec(b"[1, 2]", note="array"),
    Spec(b'"cus_1"', note="string"),
    Spec(b"null", note="null"),
    Spec(b"42", note="number"),
    Spec(b"x" * (MAX_BYTES + 1), note="just over max_bytes"),
    Spec(_canonical(value=Raw("NaN")), note="NaN"),
    Spec(_canonical(value=10**15), note="16 digits"),
    Spec(_canonical(value=10**15 - 1), note="15 digits"),
    Spec(_canonical(value="1" * 16), note="16 digits as text"),
    Spec(_canonical(value=-1), note="negative"),
    Spec(_canonical(value=0.5), note="fraction"),
    Spec(_canonical(value=None), note="no value"),
    Spec(_canonical(customer=""), note="empty customer"),
    Spec(_canonical(customer=None), note="no customer"),
    Spec(_canonical(event_name=None), note="no event name"),
    Spec(_canonical(event_name="  "), note="blank event name"),
    Spec(_canonical(timestamp=At(-STRIPE_MAX_AGE - 1.0)), note="1 s beyond 35 days"),
    Spec(
        _canonical(timestamp=At(-STRIPE_MAX_AGE + RUN_BUDGET_SECONDS + 60, offset_minutes=-570)),
        note="just inside 35 days, -09:30",
    ),
    Spec(
        _canonical(timestamp=At(STRIPE_MAX_FUTURE - 1.0, offset_minutes=840)),
        note="1 s inside +5 minutes, +14:00",
    ),
    Spec(
        _canonical(timestamp=At(STRIPE_MAX_FUTURE + RUN_BUDGET_SECONDS + 60, form="epoch_ms")),
        note="beyond +5 minutes, epoch ms",
    ),
    Spec(
        _canonical(value=3),
        kafka_seconds=-STRIPE_MAX_AGE - 3600,
        note="Kafka timestamp 35 days + 1 h old",
    ),
    Spec(_canonical(value=4), kafka_seconds=-34 * DAY, note="Kafka timestamp 34 days old"),
)


# --------------------------------------------------------------------------- the run

#: Dead-letter reasons seen per scenario, summed over its hypothesis examples.
_REASONS: dict[str, Counter[str]] = {}


@dataclass
class Expectation:
    position: Position
    sent: Outgoing
    verdict: Fate
    note: str


def run_batch(world: ReliabilityWorld, specs: list[Spec], scenario: ScenarioRow) -> None:
    """Produce the batch, run the connector once until idle, check every record's fate."""
    now_from = time.time()
    records = [render(spec, n, now_from) for n, spec in enumerate(specs)]
    positions = produce_exactly(world.bootstrap, world.topic, records)
    world.run_until_idle(world.config(records={"max_bytes": MAX_BYTES}))
    now_to = time.time()
    assert now_to - now_from < RUN_BUDGET_SECONDS, "the run outlasted the oracle's time margin"

    expectations = [
        Expectation(position, sent, oracle(sent.value, sent.timestamp_ms, now_from, now_to), s.note)
        for position, sent, s in zip(positions, records, specs, strict=True)
    ]
    check(world, expectations, scenario)


def check(world: ReliabilityWorld, expectations: list[Expectation], scenario: ScenarioRow) -> None:
    letters = read_all(world.bootstrap, world.dead_letter_topic)
    by_position: dict[Position, list[Any]] = {}
    for letter in letters:
        headers = letter_headers(letter)
        position = (
            int(headers["meterstream.source.partition"]),
            int(headers["meterstream.source.offset"]),
        )
        by_position.setdefault(position, []).append(letter)
    billed = {
        (meter, customer): (figures["sum"], figures["count"])
        for meter, by_customer in world.emulator.state.totals().items()
        for customer, figures in by_customer.items()
    }
    good = [(e, e.verdict) for e in expectations if isinstance(e.verdict, Billed)]
    bad = [e for e in expectations if not isinstance(e.verdict, Billed)]
    problems: list[str] = []
    expected_billing: dict[tuple[str, str], int] = {}
    lost = 0
    for e, billing in good:
        key = (billing.meter, billing.customer)
        assert key not in expected_billing, f"two good records share {key}"
        expected_billing[key] = billing.value
        if key not in billed:
            lost += 1
        if billed.get(key) != (billing.value, 1):
            said = [
                letter_headers(m).get("meterstream.message")
                for m in by_position.get(e.position, [])
            ]
            problems.append(
                f"good record at {e.position} ({e.note}) should bill {billing.value} to {key}, "
                f"billed (sum, count) = {billed.get(key)}; dead letters: {said}; "
                f"value {(e.sent.value or b'')[:200]!r}"
            )
    for key in set(billed) - set(expected_billing):
        problems.append(f"billed {billed[key]} to {key}, which no good record asked for")
    for e in bad:
        found = by_position.get(e.position)
        if not found:
            lost += 1
            problems.append(
                f"bad record at {e.position} ({e.note}, expected {sorted(e.verdict)}) not "
                f"dead-lettered; value {(e.sent.value or b'')[:200]!r}"
            )
            continue
        for letter in found:
            headers = letter_headers(letter)
            if headers["meterstream.reason"] not in e.verdict:
                problems.append(
                    f"record at {e.position} ({e.note}) dead-lettered as "
                    f"{headers['meterstream.reason']!r}, expected one of {sorted(e.verdict)}: "
                    f"{headers.get('meterstream.message')}; value {(e.sent.value or b'')[:200]!r}"
                )
            if letter.value() != e.sent.value or letter.key() != e.sent.key:
                problems.append(f"dead letter for {e.position} changed the key or value")
            kept = list(letter.headers() or [])[: len(e.sent.headers)]
            if kept != list(e.sent.headers):
                problems.append(
                    f"dead letter for {e.position} changed the original headers: sent "
                    f"{list(e.sent.headers)}, dead letter has {letter.headers()}"
                )
            if not headers.get("meterstream.message"):
                problems.append(f"dead letter for {e.position} has no message")
    good_positions = {e.position for e, _ in good}
    valid_dead = [p for p in by_position if p in good_positions]

    state = world.emulator.state
    scenario.records_in += len(expectations)
    scenario.billed += state.events_accepted
    scenario.dead_lettered += len(by_position)
    scenario.duplicates_absorbed += state.duplicates
    scenario.lost = (scenario.lost or 0) + lost
    scenario.double_billed = (scenario.double_billed or 0) + sum(
        max(0, count - 1) for _, count in billed.values()
    )
    reasons = _REASONS.setdefault(scenario.scenario, Counter())
    reasons.update(letter_headers(m)["meterstream.reason"] for m in letters)
    scenario.faults += 1  # one batch of hostile records
    scenario.notes = "dead letters by reason: " + ", ".join(
        f"{r} {c}" for r, c in sorted(reasons.items())
    )

    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:15])
    assert not valid_dead
    world.assert_all_committed()
    world.assert_no_crash()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: each step is a run
    suppress_health_check=(
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ),
)
@given(batch=st.lists(cases(), min_size=BATCH, max_size=BATCH))
def test_hostile_records_dead_lettered_with_reason_good_ones_billed(
    world_factory: WorldFactory, scenario: ScenarioRow, batch: list[Spec]
) -> None:
    world = world_factory(partitions=3)
    run_batch(world, [*CATALOGUE, *batch], scenario)
    world.close()
    world.emulator.stop()


def test_a_batch_stripe_rejects_dead_letters_only_the_events_at_fault(
    world_factory: WorldFactory, scenario: ScenarioRow
) -> None:
    """Harder than the connector suite's case: four kinds of refusal, scattered, adjacent,
    at batch edges and a run of whole batches, on four partitions, while Stripe also answers
    500s and expires sessions every few requests."""
    meters = [
        Meter(event_name="api_requests"),
        # A meter whose customer key is not the default: events with the default key lack it.
        Meter(event_name="llm_tokens", customer_key="customer_ref"),
        Meter(event_name="storage_gb_hours", active=False),  # archived
    ]
    world = world_factory(
        partitions=4,
        meters=meters,
        auto_meters=False,
        sync_validation=True,  # refusals answered with 400 (the split under test)
        latency_ms=5,
        error_rate=0.05,
        session_max_requests=7,
        seed=11,
    )
    rng = random.Random(5)
    culprit_meters = ("llm_tokens", "storage_gb_hours", "no_such_meter")
    records: list[Outgoing] = []
    verdicts: list[Any] = []
    for partition in range(world.partitions):
        run = range(300, 450) if partition == 1 else range(0)  # 1.5 batches of culprits
        for index in range(700):
            culprit = (
                index in run
                or index % 100 in (0, 99)  # the first and last event of a full batch
                or index in (500, 501, 502)  # adjacent
                or rng.random() < 0.04
            )
            ident = f"rej-{partition}-{index}"
            customer = f"cus_r{rng.randrange(30)}"
            meter = rng.choice(culprit_meters) if culprit else "api_requests"
            value = rng.randint(1, 50)
            body = {"id": ident, "customer": customer, "event_name": meter, "value": value}
            records.append(Outgoing(None, json.dumps(body).encode(), partition=partition))
            verdicts.append(
                frozenset({"rejected_by_stripe"}) if culprit else (ident, meter, customer, value)
            )
    world.produce(records, verdicts)
    world.run_until_idle(world.config(batching={"linger_ms": 200}))

    verdict = world.assert_exactly_once()
    for position, letters in verdict.dead_lettered_positions.items():
        sent = json.loads(world.ledger.sent[position].value or b"{}")
        for letter in letters:
            headers = letter_headers(letter)
            assert headers.get("meterstream.request_id"), f"{position}: no Request-Id"
            assert headers.get("meterstream.event_name") == sent["event_name"], position
            assert headers.get("meterstream.event_identifier") == sent["id"], position
    culprits = len(world.ledger.bad)
    stats = world.emulator.stats()
    scenario.notes = (
        f"{culprits} culprits; {stats['requests']['by_status'].get('400', 0)} requests refused "
        f"while splitting; refusals by code {stats['events']['rejected_by_code']}"
    )
    assert stats["requests"]["by_status"].get("500", 0) > 0, "Stripe also failed meanwhile"
