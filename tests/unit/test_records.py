"""decode(): bytes to a JSON object, with the dead-letter reason for everything else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import RecordError
from connector.records import decode

MAX = 1024


def _reason(value: bytes | None, max_bytes: int = MAX) -> str:
    with pytest.raises(RecordError) as caught:
        decode(value, max_bytes)
    return caught.value.reason


def test_an_object_is_returned_as_a_dict() -> None:
    record = decode(b'{"customer": "cus_1", "value": 3, "nested": {"a": [1, 2]}}', MAX)
    assert record == {"customer": "cus_1", "value": 3, "nested": {"a": [1, 2]}}


def test_a_record_of_exactly_max_bytes_is_parsed() -> None:
    body = b'{"k": "' + b"x" * (MAX - 9) + b'"}'
    assert len(body) == MAX
    assert decode(body, MAX)["k"] == "x" * (MAX - 9)


def test_size_is_checked_before_parsing() -> None:
    # Not JSON at all, but too large: refused for its size without being parsed.
    with pytest.raises(RecordError) as caught:
        decode(b"\xff" * (MAX + 1), MAX)
    assert caught.value.reason == "record_too_large"
    assert "1025 bytes" in caught.value.message
    assert str(MAX) in caught.value.message


@pytest.mark.parametrize(
    "value",
    [
        None,  # a tombstone
        b"",
        b"not json",
        b'{"customer": ',  # truncated
        b'{"value": NaN}',
        b'{"value": Infinity}',
        b'{"value": -Infinity}',
        b'{"value": 1e400}',  # overflows a double
        b'{"a": "\xff\xfe"}',  # not UTF-8
        b'\xef\xbb\xbf{"a": 1}',  # a byte-order mark
        b"{'a': 1}",  # Python, not JSON
        b'{"a": 1} {"b": 2}',  # two documents
    ],
)
def test_undecodable_values_are_invalid_json(value: bytes | None) -> None:
    assert _reason(value) == "invalid_json"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"[1, 2]", "an array"),
        (b'"a string"', "a string"),
        (b"42", "a number"),
        (b"4.5", "a number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_not_an_object_is_a_schema_violation(value: bytes, kind: str) -> None:
    with pytest.raises(RecordError) as caught:
        decode(value, MAX)
    assert caught.value.reason == "schema_violation"
    assert kind in caught.value.message


def test_messages_do_not_echo_the_record() -> None:
    with pytest.raises(RecordError) as caught:
        decode(b'{"api_key": "sk_live_secret", "x": nope}', MAX)
    assert "sk_live_secret" not in str(caught.value)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_a_dict_or_a_record_error(value: bytes) -> None:
    try:
        record = decode(value, 100)
    except RecordError as exc:
        reason = exc.reason
    else:
        assert isinstance(record, dict)
        return
    assert reason in {"invalid_json", "schema_violation", "record_too_large"}
