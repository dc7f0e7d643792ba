"""Mapper: records to Stripe meter event bodies, and every local refusal with its reason."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event as note_outcome
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.config import FanOutMeter, MappingConfig
from connector.errors import ConfigError, RecordError
from connector.mapping import Mapper, MeterEventBody
from connector.records import decode
from connector.timestamps import (
    STRIPE_MAX_AGE_SECONDS,
    STRIPE_MAX_FUTURE_SECONDS,
    format_rfc3339_ms,
)

NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z
NOW_TEXT = "2024-06-01T12:00:00.000Z"
KAFKA_MS = 1_717_243_100_000  # 100 s before NOW
KAFKA_TEXT = "2024-06-01T11:58:20.000Z"


def _mapper(**mapping: Any) -> Mapper:
    return Mapper(MappingConfig(**mapping), clock=lambda: NOW)


def _map(
    record: dict[str, Any],
    mapper: Mapper | None = None,
    *,
    offset: int = 5,
    kafka_timestamp_ms: int | None = KAFKA_MS,
) -> list[MeterEventBody]:
    return (mapper or _mapper()).map(
        record, topic="usage", partition=2, offset=offset, kafka_timestamp_ms=kafka_timestamp_ms
    )


def _one(record: dict[str, Any], mapper: Mapper | None = None, **kw: Any) -> MeterEventBody:
    events = _map(record, mapper, **kw)
    assert len(events) == 1
    return events[0]


def _refused(record: Any, mapper: Mapper | None = None, **kw: Any) -> RecordError:
    with pytest.raises(RecordError) as caught:
        _map(record, mapper, **kw)
    return caught.value


def _canonical(**fields: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": "rec-1",
        "customer": "cus_123",
        "event_name": "api_requests",
        "value": 25,
        "timestamp": "2024-06-01T11:59:00.000Z",
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not ...}


# -- the canonical usage record ----------------------------------------------------------


def test_a_canonical_record_becomes_exactly_stripes_wire_shape() -> None:
    event = _one(_canonical(region="eu-west-1"))
    assert event == {
        "event_name": "api_requests",
        "identifier": "rec-1",
        "timestamp": "2024-06-01T11:59:00.000Z",
        "payload": {"stripe_customer_id": "cus_123", "value": "25", "region": "eu-west-1"},
    }
    assert list(event) == ["event_name", "identifier", "timestamp", "payload"]


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (25, "25"),
        (0, "0"),
        ("25", "25"),
        ("0025", "25"),
        ("000", "0"),
        ("-0", "0"),
        (25.0, "25"),
        (1e14, "100000000000000"),
        (999_999_999_999_999, "999999999999999"),
        ("999999999999999", "999999999999999"),
        ("0999999999999999", "999999999999999"),  # 16 characters, 15 significant digits
    ],
)
def test_values_go_out_as_plain_decimal_strings(value: object, wire: str) -> None:
    assert _one(_canonical(value=value))["payload"]["value"] == wire


def test_negative_values_need_the_corrections_switch() -> None:
    for value in (-5, "-5", -5.0):
        error = _refused(_canonical(value=value))
        assert error.reason == "invalid_value"
        assert "allow_negative_values" in error.message
    mapper = _mapper(allow_negative_values=True)
    assert _one(_canonical(value=-5), mapper)["payload"]["value"] == "-5"
    assert _one(_canonical(value="-007"), mapper)["payload"]["value"] == "-7"
    assert _one(_canonical(value=-999_999_999_999_999), mapper)["payload"]["value"] == (
        "-999999999999999"
    )


def test_customer_and_event_name_lose_surrounding_whitespace() -> None:
    event = _one(_canonical(customer="  cus_123\n", event_name=" api_requests "))
    assert event["payload"]["stripe_customer_id"] == "cus_123"
    assert event["event_name"] == "api_requests"


# -- identifiers ---------------------------------------------------------------------------


def test_identifier_is_the_record_id_or_derived_from_the_kafka_position() -> None:
    assert _one(_canonical(id=42))["identifier"] == "42"
    assert _one(_canonical(id=...))["identifier"] == "usage/2/5"
    assert _one(_canonical(id=None))["identifier"] == "usage/2/5"
    long_id = "x" * 150
    hashed = _one(_canonical(id=long_id))["identifier"]
    assert hashed.startswith("sha256:")
    assert len(hashed) <= 100
    assert _one(_canonical(id="é" * 60))["identifier"].startswith("sha256:")  # 120 bytes


def test_without_an_identifier_path_every_event_is_derived_and_id_is_no_dimension() -> None:
    event = _one(_canonical(id="rec-1"), _mapper(identifier=None), offset=9)
    assert event["identifier"] == "usage/2/9"
    assert "id" not in event["payload"]


def test_identifiers_are_deterministic() -> None:
    record = _canonical(id=...)
    assert _map(record) == _map(record)
    assert _one(record, offset=6)["identifier"] != _one(record, offset=7)["identifier"]


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamp", "wire"),
    [
        ("2024-06-01T11:59:00.000Z", "2024-06-01T11:59:00.000Z"),  # sent as it is
        ("2024-06-01T11:59:00Z", "2024-06-01T11:59:00.000Z"),
        ("2024-06-01t11:59:00.123456z", "2024-06-01T11:59:00.123Z"),
        ("2024-06-01T17:44:00+05:45", "2024-06-01T11:59:00.000Z"),
        ("2024-06-01T11:59:00-00:00", "2024-06-01T11:59:00.000Z"),
        ("2024-06-01T03:59:00.5-08:00", "2024-06-01T11:59:00.500Z"),
        (1_717_243_140, "2024-06-01T11:59:00.000Z"),
        (1_717_243_140_250, "2024-06-01T11:59:00.250Z"),
        (1_717_243_140.5, "2024-06-01T11:59:00.500Z"),
        ("1717243140", "2024-06-01T11:59:00.000Z"),
        ("1717243140250", "2024-06-01T11:59:00.250Z"),
    ],
)
def test_record_timestamps_in_every_accepted_form(timestamp: object, wire: str) -> None:
    assert _one(_canonical(timestamp=timestamp))["timestamp"] == wire


def test_absent_timestamp_takes_the_kafka_timestamp_then_now() -> None:
    assert _one(_canonical(timestamp=...))["timestamp"] == KAFKA_TEXT
    assert _one(_canonical(timestamp=None))["timestamp"] == KAFKA_TEXT
    assert _one(_canonical(timestamp=...), kafka_timestamp_ms=None)["timestamp"] == NOW_TEXT
    # librdkafka reports -1 when the broker has no timestamp.
    assert _one(_canonical(timestamp=...), kafka_timestamp_ms=-1)["timestamp"] == NOW_TEXT
    assert _one(_canonical(timestamp=...), _mapper(timestamp=None))["timestamp"] == KAFKA_TEXT


def test_window_edges_are_inclusive() -> None:
    oldest = NOW - STRIPE_MAX_AGE_SECONDS
    newest = NOW + STRIPE_MAX_FUTURE_SECONDS
    assert _one(_canonical(timestamp=oldest))["timestamp"] == "2024-04-27T12:00:00.000Z"
    assert _one(_canonical(timestamp=newest))["timestamp"] == "2024-06-01T12:05:00.000Z"


def test_just_past_the_35_day_edge_is_out_of_range_and_says_by_how_much() -> None:
    error = _refused(_canonical(timestamp=(NOW - STRIPE_MAX_AGE_SECONDS) * 1000 - 1))
    assert error.reason == "timestamp_out_of_range"
    assert "35 days in the past" in error.message
    assert "0.001 s beyond" in error.message
    assert "'timestamp'" in error.message
    far = _refused(_canonical(timestamp="2024-03-01T12:00:00Z"))
    assert "2024-03-01T12:00:00.000Z is 92.0 days old, 57.0 days beyond" in far.message


def test_beyond_the_5_minute_future_edge_is_out_of_range_and_says_by_how_much() -> None:
    error = _refused(_canonical(timestamp=NOW + STRIPE_MAX_FUTURE_SECONDS + 0.5))
    assert error.reason == "timestamp_out_of_range"
    assert "5 minutes in the future" in error.message
    assert "5.0 minutes in the future, 0.500 s beyond" in error.message
    far = _refused(_canonical(timestamp="2024-06-01T14:05:00Z")).message
    assert "2.1 hours in the future, 2.0 hours beyond" in far


def test_an_old_kafka_timestamp_is_out_of_range_too() -> None:
    old_ms = int((NOW - 40 * 86400) * 1000)
    error = _refused(_canonical(timestamp=...), kafka_timestamp_ms=old_ms)
    assert error.reason == "timestamp_out_of_range"
    assert "Kafka record timestamp" in error.message
    assert "40.0 days old, 5.0 days beyond" in error.message


def test_the_window_follows_the_injected_clock() -> None:
    record = _canonical(timestamp="2024-06-01T11:59:00Z")
    later = Mapper(MappingConfig(), clock=lambda: NOW + STRIPE_MAX_AGE_SECONDS)
    assert _refused(record, later).reason == "timestamp_out_of_range"


# -- other shapes: dotted paths, constant names, renamed keys, dimensions -------------------


def test_dotted_paths_read_nested_records() -> None:
    mapper = _mapper(
        customer="account.stripe.customer",
        value="usage.tokens.input",
        event_name="meta.meter",
        timestamp="meta.at",
        identifier="meta.request_id",
        dimensions=["meta.region", "usage.model.name"],
    )
    record = {
        "account": {"stripe": {"customer": "cus_9"}},
        "usage": {"tokens": {"input": 812, "output": 90}, "model": {"name": "large"}},
        "meta": {
            "meter": "input_tokens",
            "at": "2024-06-01T11:00:00Z",
            "request_id": "r-7",
            "region": "us",
        },
    }
    assert _one(record, mapper) == {
        "event_name": "input_tokens",
        "identifier": "r-7",
        "timestamp": "2024-06-01T11:00:00.000Z",
        "payload": {"stripe_customer_id": "cus_9", "value": "812", "region": "us", "name": "large"},
    }


@pytest.mark.parametrize(
    "account",
    [{"stripe": "cus_9"}, {"stripe": ["cus_9"]}, {}, None, "cus_9", {"stripe": {"x": 1}}],
)
def test_a_path_through_a_non_object_or_a_missing_key_is_absent(account: object) -> None:
    mapper = _mapper(customer="account.stripe.customer")
    error = _refused(_canonical(customer=..., account=account), mapper)
    assert error.reason == "mapping_error"
    assert "account.stripe.customer" in error.message


def test_a_constant_event_name_wins_over_the_path() -> None:
    mapper = _mapper(constant_event_name="api_requests")
    assert _one(_canonical(event_name="something_else"), mapper)["event_name"] == "api_requests"
    assert _one(_canonical(event_name=...), mapper)["event_name"] == "api_requests"
    assert "event_name" not in _one(_canonical(event_name="x"), mapper)["payload"]


def test_payload_keys_follow_the_meters_event_payload_keys() -> None:
    mapper = _mapper(customer_payload_key="account", value_payload_key="tokens")
    assert _one(_canonical(), mapper)["payload"] == {"account": "cus_123", "tokens": "25"}


def test_default_dimensions_are_the_extra_top_level_strings() -> None:
    record = _canonical(
        region="eu",
        tier="",
        count=3,  # not a string: ignored
        flag=True,
        nested={"a": "b"},
        missing=None,
        stripe_customer_id="cus_other",  # would overwrite the customer: never copied
    )
    assert _one(record)["payload"] == {
        "stripe_customer_id": "cus_123",
        "value": "25",
        "region": "eu",
        "tier": "",
    }


def test_canonical_names_are_never_dimensions_even_when_not_mapped() -> None:
    mapper = _mapper(customer="cust", value="qty", constant_event_name="api_requests")
    record = {
        "cust": "cus_1",
        "qty": 2,
        "event_name": "ignored",
        "value": "x",
        "customer": "y",
        "zone": "z1",
    }
    assert _one(record, mapper)["payload"] == {
        "stripe_customer_id": "cus_1",
        "value": "2",
        "zone": "z1",
    }


def test_listed_dimensions_turn_scalars_into_strings() -> None:
    mapper = _mapper(dimensions=["region", "meta.gpu", "meta.ratio", "meta.spot", "meta.none"])
    record = _canonical(
        region="eu", other="not listed", meta={"gpu": 8, "ratio": 0.5, "spot": False, "none": None}
    )
    assert _one(record, mapper)["payload"] == {
        "stripe_customer_id": "cus_123",
        "value": "25",
        "region": "eu",
        "gpu": "8",
        "ratio": "0.5",
        "spot": "false",
    }
    error = _refused(_canonical(region={"a": 1}), mapper)
    assert error.reason == "schema_violation"
    assert "'region'" in error.message


def test_an_empty_dimension_list_copies_nothing() -> None:
    assert _one(_canonical(region="eu"), _mapper(dimensions=[]))["payload"] == {
        "stripe_customer_id": "cus_123",
        "value": "25",
    }


# -- fan-out ----------------------------------------------------------------------------


def _fan_out_mapper(**mapping: Any) -> Mapper:
    return _mapper(
        fan_out=[
            FanOutMeter(event_name="input_tokens", value="usage.input"),
            FanOutMeter(
                event_name="output_tokens",
                value="usage.output",
                customer_payload_key="cust",
                value_payload_key="tokens",
            ),
            FanOutMeter(event_name="cached_tokens", value="usage.cached", optional=True),
        ],
        **mapping,
    )


def _tokens(**usage: Any) -> dict[str, Any]:
    return {
        "id": "gen-1",
        "customer": "cus_7",
        "timestamp": "2024-06-01T11:00:00Z",
        "model": "large",
        "usage": usage,
    }


def test_fan_out_makes_one_event_per_meter_with_distinct_identifiers() -> None:
    events = _map(_tokens(input=100, output=20, cached=5), _fan_out_mapper())
    assert events == [
        {
            "event_name": "input_tokens",
            "identifier": "gen-1#input_tokens",
            "timestamp": "2024-06-01T11:00:00.000Z",
            "payload": {"stripe_customer_id": "cus_7", "value": "100", "model": "large"},
        },
        {
            "event_name": "output_tokens",
            "identifier": "gen-1#output_tokens",
            "timestamp": "2024-06-01T11:00:00.000Z",
            "payload": {"cust": "cus_7", "tokens": "20", "model": "large"},
        },
        {
            "event_name": "cached_tokens",
            "identifier": "gen-1#cached_tokens",
            "timestamp": "2024-06-01T11:00:00.000Z",
            "payload": {"stripe_customer_id": "cus_7", "value": "5", "model": "large"},
        },
    ]
    assert events[0]["payload"] is not events[2]["payload"]


def test_fan_out_without_ids_derives_distinct_deterministic_identifiers() -> None:
    record = _tokens(input=1, output=2)
    del record["id"]
    first = [e["identifier"] for e in _map(record, _fan_out_mapper(), offset=11)]
    assert first == ["usage/2/11#input_tokens", "usage/2/11#output_tokens"]
    assert first == [e["identifier"] for e in _map(record, _fan_out_mapper(), offset=11)]


def test_an_optional_meter_without_a_value_is_skipped() -> None:
    events = _map(_tokens(input=1, output=2), _fan_out_mapper())
    assert [e["event_name"] for e in events] == ["input_tokens", "output_tokens"]


def test_a_required_meter_without_a_value_refuses_the_record() -> None:
    error = _refused(_tokens(input=1), _fan_out_mapper())
    assert error.reason == "mapping_error"
    assert "usage.output" in error.message


def test_fan_out_is_all_or_nothing() -> None:
    error = _refused(_tokens(input=1, output=2.5), _fan_out_mapper())
    assert error.reason == "invalid_value"
    assert "usage.output" in error.message


def test_fan_out_with_every_meter_skipped_is_a_mapping_error() -> None:
    mapper = _mapper(
        fan_out=[
            FanOutMeter(event_name="a", value="x", optional=True),
            FanOutMeter(event_name="b", value="y", optional=True),
        ]
    )
    error = _refused({"customer": "cus_1"}, mapper)
    assert error.reason == "mapping_error"
    assert "'x'" in error.message
    assert "'y'" in error.message


def test_fan_out_checks_customer_and_timestamp_once_for_all_meters() -> None:
    assert _refused({**_tokens(input=1, output=2), "customer": ""}, _fan_out_mapper()).reason == (
        "mapping_error"
    )
    old = {**_tokens(input=1, output=2), "timestamp": "2024-01-01T00:00:00Z"}
    assert _refused(old, _fan_out_mapper()).reason == "timestamp_out_of_range"


# -- every refusal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "reason", "where"),
    [
        (_canonical(customer=...), "mapping_error", "'customer'"),
        (_canonical(customer=None), "mapping_error", "'customer'"),
        (_canonical(customer=""), "mapping_error", "'customer'"),
        (_canonical(customer="   "), "mapping_error", "'customer'"),
        (_canonical(customer=123), "schema_violation", "'customer'"),
        (_canonical(customer=["cus_1"]), "schema_violation", "'customer'"),
        (_canonical(event_name=...), "mapping_error", "'event_name'"),
        (_canonical(event_name=""), "mapping_error", "'event_name'"),
        (_canonical(event_name=7), "schema_violation", "'event_name'"),
        (_canonical(value=...), "mapping_error", "'value'"),
        (_canonical(value=None), "mapping_error", "'value'"),
        (_canonical(value=2.5), "invalid_value", "'value'"),
        (_canonical(value="2.5"), "invalid_value", "'value'"),
        (_canonical(value="1e3"), "invalid_value", "'value'"),
        (_canonical(value=""), "invalid_value", "'value'"),
        (_canonical(value="-"), "invalid_value", "'value'"),
        (_canonical(value=" 5"), "invalid_value", "'value'"),
        (_canonical(value="+5"), "invalid_value", "'value'"),
        (_canonical(value="٣"), "invalid_value", "'value'"),  # a non-ASCII digit
        (_canonical(value="NaN"), "invalid_value", "'value'"),
        (_canonical(value=float("nan")), "invalid_value", "'value'"),
        (_canonical(value=float("inf")), "invalid_value", "'value'"),
        (_canonical(value=True), "invalid_value", "'value'"),
        (_canonical(value=[1]), "invalid_value", "'value'"),
        (_canonical(value={"n": 1}), "invalid_value", "'value'"),
        (_canonical(value=10**15), "invalid_value", "15 digits"),
        (_canonical(value=1e15), "invalid_value", "15 digits"),
        (_canonical(value=1e23), "invalid_value", "15 digits"),
        (_canonical(value="1000000000000000"), "invalid_value", "15 digits"),
        (_canonical(value="9" * 5000), "invalid_value", "15 digits"),
        (_canonical(id=""), "mapping_error", "'id'"),
        (_canonical(id=1.5), "schema_violation", "'id'"),
        (_canonical(id=True), "schema_violation", "'id'"),
        (_canonical(id={"a": 1}), "schema_violation", "'id'"),
        (_canonical(timestamp="yesterday"), "schema_violation", "'timestamp'"),
        (_canonical(timestamp="2024-06-01"), "schema_violation", "'timestamp'"),
        (_canonical(timestamp="2024-06-01T12:00:00"), "schema_violation", "offset"),
        (_canonical(timestamp=True), "schema_violation", "'timestamp'"),
        (_canonical(timestamp={"s": 1}), "schema_violation", "'timestamp'"),
        (_canonical(timestamp=0), "timestamp_out_of_range", "days old"),
        (_canonical(timestamp="9999-12-31T23:59:59Z"), "timestamp_out_of_range", "in the future"),
        (_canonical(timestamp=1e300), "timestamp_out_of_range", "in the future"),
        (_canonical(event_name="e" * 101), "record_too_large", "'event_name'"),
        (_canonical(customer="c" * 256), "record_too_large", "'customer'"),
        (_canonical(region="r" * 501), "record_too_large", "'region'"),
        (_canonical(**{"k" * 101: "v"}), "record_too_large", "101 characters"),
        (_canonical(**{f"dim{i}": "v" for i in range(49)}), "record_too_large", "49 dimension"),
    ],
)
def test_every_refusal_names_its_reason_and_where(record: Any, reason: str, where: str) -> None:
    error = _refused(record)
    assert error.reason == reason
    assert where in error.message


def test_the_limits_themselves_are_accepted() -> None:
    record = _canonical(
        event_name="e" * 100,
        customer="c" * 255,
        region="r" * 500,
        **{"k" * 100: "v"},
        **{f"dim{i}": "v" for i in range(46)},
    )
    event = _one(record)
    assert len(event["payload"]) == 50


def test_a_record_that_is_not_an_object_is_a_schema_violation() -> None:
    assert _refused(["not", "an", "object"]).reason == "schema_violation"


def test_messages_abbreviate_bad_values() -> None:
    error = _refused(_canonical(value="1" * 10_000 + ".5"))
    assert len(error.message) < 200
    assert "10002 characters" in error.message
    error = _refused(_canonical(customer={"nested": "x" * 10_000}))
    assert len(error.message) < 200


# -- configuration that could only produce bad events --------------------------------------


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        (
            {
                "fan_out": [
                    FanOutMeter(event_name="a", value="x"),
                    FanOutMeter(event_name="a", value="y"),
                ]
            },
            "mapping.fan_out.1.event_name",
        ),
        ({"dimensions": ["region", "meta.region"]}, "mapping.dimensions (meta.region)"),
        ({"dimensions": ["meta.value"]}, "mapping.dimensions (meta.value)"),
        ({"value_payload_key": "stripe_customer_id"}, "mapping.value_payload_key"),
        ({"dimensions": [f"d{i}" for i in range(49)]}, "mapping.dimensions"),
    ],
)
def test_contradictory_mappings_are_config_errors(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _mapper(**mapping)
    assert key in [k for k, _ in caught.value.problems]


# -- properties --------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_NEAR_NOW = st.floats(NOW - 40 * 86400, NOW + 3600)
_TIMESTAMPS = st.one_of(
    _NEAR_NOW,
    _NEAR_NOW.map(format_rfc3339_ms),
    _NEAR_NOW.map(lambda t: int(t * 1000)),
    _NEAR_NOW.map(lambda t: str(int(t))),
    st.sampled_from(["2024-06-01T11:00:00Z", "2024-06-01T17:00:00+05:45", "2024-06-01T25:00Z"]),
    _JSON,
)


def _mostly(good: st.SearchStrategy[Any], *edges: object) -> st.SearchStrategy[Any]:
    """Usually a plausible value, else an edge case or any JSON: every path gets exercised."""
    bad = st.one_of(_JSON, st.sampled_from(edges)) if edges else _JSON
    return st.integers(0, 5).flatmap(lambda pick: good if pick else bad)


_CUSTOMERS = _mostly(st.sampled_from(["cus_1", " cus_2 ", "cus_3"]), "", " ", "c" * 256)
_VALUES = _mostly(
    st.integers(0, 10**15) | st.from_regex(r"[0-9]{1,15}", fullmatch=True),
    -1,
    "-1",
    10**15,
    "1" * 16,
    2.5,
    "1e3",
)
_USAGE = _mostly(
    st.fixed_dictionaries(
        {"customer": _CUSTOMERS, "n": _VALUES},
        optional={"b": _VALUES, "zone": _mostly(st.text(max_size=20))},
    )
)
_REQUIRED = {
    "customer": _CUSTOMERS,
    "event_name": _mostly(st.sampled_from(["api_requests", " llm_tokens"]), "", "e" * 101),
    "value": _VALUES,
    "usage": _USAGE,
}
_OPTIONAL = {
    "id": _mostly(st.text(max_size=120) | st.integers() | st.none(), ""),
    "timestamp": _TIMESTAMPS,
    "region": _mostly(st.text(max_size=20) | st.none(), "r" * 501),
}
_RECORDS = st.one_of(
    st.fixed_dictionaries(_REQUIRED, optional=_OPTIONAL),
    st.fixed_dictionaries({}, optional={**_REQUIRED, **_OPTIONAL}),
    st.dictionaries(st.text(max_size=10), _JSON, max_size=6),
)
_MAPPERS = [
    _mapper(),
    _mapper(customer="usage.customer", value="usage.n", dimensions=["region", "usage.zone"]),
    _mapper(
        fan_out=[
            FanOutMeter(event_name="a", value="value"),
            FanOutMeter(event_name="b", value="usage.b", optional=True),
        ]
    ),
]


@settings(max_examples=400, deadline=None)
@given(_RECORDS, st.sampled_from(range(len(_MAPPERS))), st.none() | st.integers(-1, 2**41))
def test_any_record_maps_or_raises_a_record_error(
    record: dict[str, Any], which: int, kafka_ms: int | None
) -> None:
    try:
        value = orjson.dumps(record)
    except orjson.JSONEncodeError:
        return  # not representable as JSON at all: cannot arrive from Kafka
    try:
        events = _MAPPERS[which].map(
            decode(value, 1 << 20),
            topic="usage",
            partition=0,
            offset=1,
            kafka_timestamp_ms=kafka_ms,
        )
    except RecordError as exc:
        reason: str = exc.reason
        events = []
    else:
        reason = ""
    note_outcome(reason or "mapped")
    # Only reasons the mapping can know; Stripe's own come later, from the sink.
    assert reason not in {"rejected_by_stripe", "session_expired"}
    assert events or reason
    for event in events:
        assert set(event) == {"event_name", "identifier", "timestamp", "payload"}
        assert 1 <= len(event["event_name"]) <= 100
        assert 1 <= len(event["identifier"]) <= 100
        assert len(event["timestamp"]) == 24
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in event["payload"].items())
        assert len(event["payload"]) <= 50


@settings(max_examples=200, deadline=None)
@given(
    st.integers(-(10**15) + 1, 10**15 - 1),
    st.sampled_from(["int", "str", "padded", "float"]),
)
def test_every_whole_number_within_15_digits_round_trips(number: int, form: str) -> None:
    raw: object = {
        "int": number,
        "str": str(number),
        "padded": ("-" if number < 0 else "") + "000" + str(abs(number)),
        "float": float(number),
    }[form]
    mapper = _mapper(allow_negative_values=True)
    assert _one(_canonical(value=raw), mapper)["payload"]["value"] == str(number)
