"""schemas/usage-record.schema.json and the Mapper's plain-Python checks say the same thing.

The connector never runs jsonschema per record (too slow); these tests are what keeps the
published schema and the code from drifting apart.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from connector.config import MappingConfig
from connector.errors import RecordError
from connector.mapping import Mapper
from connector.timestamps import parse_timestamp

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "usage-record.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)
NOW = 1_717_243_200.0  # 2024-06-01T12:00:00Z: the examples are within Stripe's window
MAPPER = Mapper(MappingConfig(), clock=lambda: NOW)
CORRECTIONS = Mapper(MappingConfig(allow_negative_values=True), clock=lambda: NOW)


def _schema_ok(record: Any) -> bool:
    return VALIDATOR.is_valid(record)


def _mapper_ok(record: Any, mapper: Mapper = MAPPER) -> bool:
    try:
        mapper.map(record, topic="usage", partition=0, offset=0, kafka_timestamp_ms=None)
    except RecordError:
        return False
    return True


def _base(**fields: Any) -> dict[str, Any]:
    record = {
        "id": "r-1",
        "customer": "cus_1",
        "event_name": "api_requests",
        "value": 3,
        "timestamp": "2024-06-01T11:00:00Z",
    }
    record.update(fields)
    return {k: v for k, v in record.items() if v is not ...}


def test_the_schema_is_valid_draft_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert len(SCHEMA["examples"]) >= 3


@pytest.mark.parametrize("example", SCHEMA["examples"])
def test_every_example_is_valid_and_maps(example: dict[str, Any]) -> None:
    VALIDATOR.validate(example)
    [event] = MAPPER.map(example, topic="usage", partition=0, offset=0, kafka_timestamp_ms=None)
    assert event["event_name"] == example["event_name"]
    assert event["payload"]["stripe_customer_id"] == example["customer"]
    assert event["payload"]["value"] == str(int(example["value"]))
    extras = {k: v for k, v in example.items() if k not in SCHEMA["properties"]}
    assert {k: event["payload"][k] for k in extras} == extras
    if "id" in example:
        assert event["identifier"] == example["id"]


def test_the_examples_map_to_the_documented_wire_shape() -> None:
    _, second, third, _ = SCHEMA["examples"]
    [event] = MAPPER.map(second, topic="usage", partition=0, offset=0, kafka_timestamp_ms=None)
    assert event == {
        "event_name": "llm_tokens",
        "identifier": "gen_71c0-input",
        "timestamp": "2024-06-01T11:59:50.000Z",
        "payload": {
            "stripe_customer_id": "cus_Q3kX9b2LmN7pRt",
            "value": "1843",
            "model": "large-2024-05",
            "region": "us-east-1",
        },
    }
    [event] = MAPPER.map(third, topic="usage", partition=0, offset=0, kafka_timestamp_ms=None)
    assert event["timestamp"] == "2024-06-01T11:45:00.000Z"


INVALID = [
    ("not an object", ["a", "list"]),
    ("no customer", _base(customer=...)),
    ("null customer", _base(customer=None)),
    ("empty customer", _base(customer="")),
    ("blank customer", _base(customer="  ")),
    ("numeric customer", _base(customer=42)),
    ("customer too long", _base(customer="c" * 256)),
    ("no event name", _base(event_name=...)),
    ("empty event name", _base(event_name="")),
    ("event name too long", _base(event_name="e" * 101)),
    ("event name not a string", _base(event_name=["x"])),
    ("no value", _base(value=...)),
    ("null value", _base(value=None)),
    ("fractional value", _base(value=2.5)),
    ("fractional string value", _base(value="2.5")),
    ("exponent string value", _base(value="1e3")),
    ("16-digit value", _base(value=10**15)),
    ("16-digit string value", _base(value="1000000000000000")),
    ("boolean value", _base(value=True)),
    ("object value", _base(value={"n": 1})),
    ("padded string value", _base(value=" 3")),
    ("plus-signed value", _base(value="+3")),
    ("empty id", _base(id="")),
    ("fractional id", _base(id=1.5)),
    ("object id", _base(id={"a": 1})),
    ("date-only timestamp", _base(timestamp="2024-06-01")),
    ("timestamp without offset", _base(timestamp="2024-06-01T11:00:00")),
    ("timestamp with a space", _base(timestamp="2024-06-01 11:00:00Z")),
    ("timestamp in basic format", _base(timestamp="20240601T110000Z")),
    ("timestamp month 13", _base(timestamp="2024-13-01T11:00:00Z")),
    ("leap second", _base(timestamp="2024-06-30T23:59:60Z")),
    ("timestamp word", _base(timestamp="yesterday")),
    ("boolean timestamp", _base(timestamp=False)),
    ("dimension too long", _base(region="r" * 501)),
    ("field name too long", _base(**{"k" * 101: "v"})),
]


@pytest.mark.parametrize(("why", "record"), INVALID, ids=[why for why, _ in INVALID])
def test_invalid_records_are_refused_by_both(why: str, record: Any) -> None:
    assert not _schema_ok(record), f"schema accepts: {why}"
    assert not _mapper_ok(record), f"mapper accepts: {why}"


VALID = [
    ("minimal", _base(id=..., timestamp=...)),
    ("integer id", _base(id=12345)),
    ("null id and timestamp", _base(id=None, timestamp=None)),
    ("string value with zeros", _base(value="007")),
    ("integral float value", _base(value=25.0)),
    ("15-digit value", _base(value=999_999_999_999_999)),
    ("epoch seconds", _base(timestamp=1_717_243_000)),
    ("epoch milliseconds string", _base(timestamp="1717243000000")),
    ("offset +05:45", _base(timestamp="2024-06-01T16:45:00+05:45")),
    ("offset -00:00", _base(timestamp="2024-06-01T11:00:00-00:00")),
    ("lower-case t and z", _base(timestamp="2024-06-01t11:00:00.123456789z")),
    ("non-string extras are ignored", _base(count=3, tags=["a"], meta={"k": "v"})),
    ("padded customer", _base(customer=" cus_1 ")),
]


@pytest.mark.parametrize(("why", "record"), VALID, ids=[why for why, _ in VALID])
def test_valid_records_are_accepted_by_both(why: str, record: Any) -> None:
    assert _schema_ok(record), f"schema refuses: {why}"
    assert _mapper_ok(record), f"mapper refuses: {why}"


def test_negative_values_are_valid_records_refused_by_default() -> None:
    record = _base(value=-3)
    assert _schema_ok(record)
    assert not _mapper_ok(record)
    assert _mapper_ok(record, CORRECTIONS)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="-+0123456789 .e", max_size=18) | st.integers(-(10**16), 10**16))
def test_value_rules_agree_exactly(value: object) -> None:
    record = _base(value=value)
    assert _schema_ok(record) == _mapper_ok(record, CORRECTIONS)


_TIMESTAMP_TEXT = st.from_regex(
    r"20[0-9]{2}-[01][0-9]-[0-3][0-9][Tt ][0-2][0-9]:[0-6][0-9]:[0-6][0-9](\.[0-9]{0,9})?"
    r"([Zz]|[+-][0-2][0-9]:?[0-6][0-9])?",
    fullmatch=True,
)


TIMESTAMP_VALIDATOR = Draft202012Validator(SCHEMA["properties"]["timestamp"])


@settings(max_examples=300, deadline=None)
@given(_TIMESTAMP_TEXT)
def test_timestamp_rules_agree_except_for_the_calendar(text: str) -> None:
    try:
        parse_timestamp(text)
    except ValueError:
        parsed = False
    else:
        parsed = True
    if parsed:
        assert TIMESTAMP_VALIDATOR.is_valid(text)
    elif TIMESTAMP_VALIDATOR.is_valid(text):
        # The pattern cannot know that June has no 31st: only such dates may differ.
        with pytest.raises(ValueError):
            date(int(text[:4]), int(text[5:7]), int(text[8:10]))
