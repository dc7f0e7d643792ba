"""The fast decode + map path against the one it replaced: same events, same refusals.

``tests/unit/reference_mapper.py`` is the mapper and decoder exactly as they were before
the CPU work of issue 12. Every generated Kafka record value, valid or hostile (wrong
types, missing fields, huge numbers, bad or edge timestamps, non-UTF-8, non-object JSON,
oversized), goes through both, for several mappings; the outcomes must be identical:
the same event bodies byte for byte (key order included, as they are sent), or the same
refusal reason and message.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

import orjson
from hypothesis import event as note_outcome
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import FanOutMeter, MappingConfig
from connector.errors import RecordError
from connector.mapping import Mapper
from connector.records import decode
from connector.timestamps import STRIPE_MAX_AGE_SECONDS, STRIPE_MAX_FUTURE_SECONDS
from connector.timestamps import format_rfc3339_ms as wire
from meterstream_local import samples
from tests.unit import reference_mapper

#: Mappings that take every branch of the mapper: flat and nested paths, a constant event
#: name, listed and default dimensions, no id or timestamp path, corrections, fan-out.
MAPPINGS: list[dict[str, Any]] = [
    {},
    {"constant_event_name": "api_requests", "allow_negative_values": True},
    {"dimensions": ["region", "meta.zone", "n"]},
    {
        "customer": "account.customer",
        "value": "usage.n",
        "timestamp": "meta.time",
        "identifier": "meta.id",
    },
    {"identifier": None, "timestamp": None, "dimensions": []},
    {"customer_payload_key": "cust", "value_payload_key": "qty", "event_name": "kind"},
    {
        "fan_out": [
            FanOutMeter(event_name="input_tokens", value="usage.n"),
            FanOutMeter(event_name="output_tokens", value="usage.out", optional=True),
        ]
    },
]

Outcome = tuple[Any, ...]


def _outcome(mapper: Any, decode_value: Any, value: bytes | None, case: dict[str, Any]) -> Outcome:
    try:
        record = decode_value(value, case["max_bytes"])
        events = mapper(record, "usage", 3, 7, case["kafka_ms"])
    except RecordError as exc:
        return ("refused", exc.reason, exc.message)
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))
    return ("events", orjson.dumps(events))


@functools.cache
def _config(index: int) -> MappingConfig:
    return MappingConfig(**MAPPINGS[index])


def _both(mapping: int, now: float) -> tuple[Any, Any, Any]:
    """(reference map, new map, new map_record) for ``MAPPINGS[mapping]`` at ``now``."""
    config = _config(mapping)
    reference = reference_mapper.Mapper(config, clock=lambda: now)
    new = Mapper(config, clock=lambda: now)

    def reference_map(record: Any, topic: str, partition: int, offset: int, ms: Any) -> Any:
        return reference.map(
            record, topic=topic, partition=partition, offset=offset, kafka_timestamp_ms=ms
        )

    def new_map(record: Any, topic: str, partition: int, offset: int, ms: Any) -> Any:
        return new.map(
            record, topic=topic, partition=partition, offset=offset, kafka_timestamp_ms=ms
        )

    return reference_map, new_map, new.map_record


def _assert_same(mapping: int, now: float, value: bytes | None, **case: Any) -> str:
    reference_map, new_map, new_map_record = _both(mapping, now)
    expected = _outcome(reference_map, reference_mapper.decode, value, case)
    assert _outcome(new_map, decode, value, case) == expected, value
    assert _outcome(new_map_record, decode, value, case) == expected, value
    return expected[1] if expected[0] == "refused" else expected[0]


# -- generated records ----------------------------------------------------------------------


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


_ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=6,
).map(_json)
#: JSON text that orjson.dumps cannot write: huge and odd numbers, bad escapes.
_RAW_NUMBERS = st.one_of(
    st.integers(14, 400).map(lambda n: "1" + "0" * n),
    st.integers(14, 400).map(lambda n: "-" + "9" * n),
    st.sampled_from(["-0", "0.0", "25.0", "1.5", "1e3", "1E400", "-1e-400", "1.0e2", "007"]),
)
_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", " cus_2 ", "cus_1", "api_requests", " llm_tokens\t", "#\\"]),
    st.integers(99, 102).map(lambda n: "i" * n),
    st.integers(254, 257).map(lambda n: "c" * n),
    st.integers(499, 502).map(lambda n: "r" * n),
    st.sampled_from(["é" * 60, "客" * 40, "ümlaut-id"]),
).map(_json)
_BAD_ESCAPES = st.sampled_from(['"\\ud800"', '"\\udc00x"', '"\\x41"', '"tab\there"'])


@functools.cache  # one strategy per ``now``: building strategies is what costs
def _timestamp(now: float) -> st.SearchStrategy[str]:
    return _timestamp_at(now)


@st.composite
def _timestamp_at(draw: st.DrawFn, now: float) -> str:
    """A timestamp fragment near ``now`` and the window's edges, in every accepted form."""
    edge = draw(
        st.sampled_from(
            [now, now - STRIPE_MAX_AGE_SECONDS, now + STRIPE_MAX_FUTURE_SECONDS, now - 3600]
        )
    )
    epoch = edge + draw(st.sampled_from([0.0, 0.0004, -0.0004, 0.001, -0.001, 0.5, -0.5, 2.0]))
    epoch += draw(st.floats(-2.0, 2.0)) if draw(st.booleans()) else 0.0
    form = draw(st.integers(0, 9))
    if form <= 3:
        return _json(wire(epoch))  # the wire shape, the common case
    if form == 4:
        return _json(wire(epoch)[:19] + "Z")
    if form == 5:
        return _json(wire(epoch).replace("T", "t").replace("Z", "+00:00"))
    if form == 6:
        return _json(int(epoch * 1000))
    if form == 7:
        return repr(epoch)
    if form == 8:
        return _json(str(int(epoch)))
    return _json(
        draw(
            st.sampled_from(
                [
                    "2024-13-01T12:00:00.000Z",
                    "2024-06-01T24:00:00.000Z",
                    "2024-06-01 12:00:00.000Z",
                    "2024-06-01T12:00:00,000Z",
                    "2024-06-01T12:00:00.0a0Z",
                    "2024-06-01T12:00:00.000z",
                    "2024-06-01",
                    "soon",
                ]
            )
        )
    )


@functools.cache
def _fragments(now: float) -> st.SearchStrategy[str]:
    return st.one_of(
        _TEXT,
        _ANY_JSON,
        _RAW_NUMBERS,
        _BAD_ESCAPES,
        _timestamp(now),
        st.integers(0, 10**6).map(str),
    )


_KEYS = [
    "id",
    "customer",
    "event_name",
    "kind",
    "value",
    "timestamp",
    "region",
    "zone",
    "n",
    "stripe_customer_id",
    "cust",
    "qty",
    "",
    "k" * 101,
    "ключ",
]


@functools.cache
def _canonical(now: float) -> st.SearchStrategy[str]:
    return _canonical_at(now)


@st.composite
def _canonical_at(draw: st.DrawFn, now: float) -> str:
    """A canonical record as a producer writes it, with a field or two possibly spoiled."""
    fields = {
        "id": _json(draw(st.sampled_from(["rec-1", "évent-1", "i" * 100, "x#y"]))),
        "customer": _json(draw(st.sampled_from(["cus_1", " cus_2 ", "cus_3"]))),
        "event_name": _json(draw(st.sampled_from(["api_requests", "llm_tokens"]))),
        "value": draw(
            st.integers(-(10**15), 10**15).map(str)
            | st.sampled_from(['"25"', '"-0025"', "25.0", "2.5", '"1e3"', "true", "1" + "0" * 15])
        ),
        "timestamp": draw(_timestamp(now)),
        "region": _json("eu-west-1"),
    }
    nested = {
        "account": '{"customer": ' + fields["customer"] + "}",
        "usage": '{"n": ' + fields["value"] + ', "out": ' + draw(_fragments(now)) + "}",
        "meta": '{"time": ' + fields["timestamp"] + ', "id": ' + fields["id"] + ', "zone": "z1"}',
    }
    fields.update(nested)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        key = draw(st.sampled_from(sorted(fields)))
        if draw(st.booleans()):
            fields[key] = draw(_fragments(now))
        else:
            del fields[key]
    for key, fragment in draw(
        st.lists(st.tuples(st.sampled_from(_KEYS), _fragments(now)), max_size=2)
    ):
        fields[key] = fragment
    return "{" + ",".join(f"{_json(key)}:{fragment}" for key, fragment in fields.items()) + "}"


@functools.cache
def _hostile(now: float) -> st.SearchStrategy[bytes | None]:
    return _hostile_at(now)


@st.composite
def _hostile_at(draw: st.DrawFn, now: float) -> bytes | None:
    """Anything at all a topic can hold."""
    pick = draw(st.integers(0, 6))
    if pick == 0:
        return draw(st.none() | st.just(b"") | st.binary(max_size=40))
    if pick == 1:
        return draw(_ANY_JSON | _RAW_NUMBERS | _TEXT).encode()
    if pick == 2:  # invalid UTF-8 or a byte-order mark around a valid record
        body = draw(_canonical(now)).encode()
        at = draw(st.integers(0, len(body)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf"]))
        return body[:at] + junk + body[at:]
    if pick == 3:
        return (
            draw(_canonical(now)) + draw(st.sampled_from(["", " ", "x", ",{}", "NaN"]))
        ).encode()
    if pick == 4:  # many dimensions
        count = draw(st.integers(45, 52))
        dims = ",".join(f'"d{i}":"v"' for i in range(count))
        return ('{"customer":"c","event_name":"e","value":1,' + dims + "}").encode()
    keys = st.sampled_from(_KEYS) | st.text(max_size=4)
    pairs = draw(st.lists(st.tuples(keys, _fragments(now)), max_size=7))
    return ("{" + ",".join(f"{_json(k)}:{v}" for k, v in pairs) + "}").encode()


#: A few clocks (strategies are built once per clock), whole and fractional.
_NOW = st.sampled_from([1_600_000_000.0, 1_717_243_200.25, 1_800_000_000.123456, 1.9e9 + 0.5])


@st.composite
def _case(draw: st.DrawFn) -> dict[str, Any]:
    now = draw(_NOW)
    canonical = draw(st.integers(0, 2)) > 0
    value = draw(_canonical(now).map(str.encode) if canonical else _hostile(now))
    kafka_ms = draw(
        st.none()
        | st.sampled_from([-1, 0, 1])
        | st.integers(int((now - 36 * 86400) * 1000), int((now + 600) * 1000))
    )
    max_bytes = draw(st.sampled_from([1 << 20] * 9 + [64]))
    return {
        "mapping": draw(st.sampled_from(range(len(MAPPINGS)))),
        "now": now,
        "value": value,
        "kafka_ms": kafka_ms,
        "max_bytes": max_bytes,
    }


@settings(max_examples=1000, deadline=None)
@given(_case())
def test_every_record_maps_exactly_as_before(case: dict[str, Any]) -> None:
    outcome = _assert_same(
        case["mapping"],
        case["now"],
        case["value"],
        kafka_ms=case["kafka_ms"],
        max_bytes=case["max_bytes"],
    )
    note_outcome(outcome)


def test_the_comparison_sees_every_outcome_of_the_sample_records() -> None:
    """The benchmark's own records, good and bad, through both: identical, and every local
    refusal reason occurs, so the comparison is not vacuous."""
    now = 1_800_000_000.0
    reasons: Counter[str] = Counter()
    for index, (_key, value, _expected) in enumerate(
        samples.generate(600, bad_every=5, customers=20, now=now)
    ):
        for mapping in (0, 2):
            reasons[_assert_same(mapping, now, value, kafka_ms=index, max_bytes=1 << 20)] += 1
    assert set(reasons) >= {
        "events",
        "invalid_json",
        "schema_violation",
        "mapping_error",
        "invalid_value",
        "timestamp_out_of_range",
    }
