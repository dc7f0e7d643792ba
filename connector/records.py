"""Kafka record values to JSON objects: the one place records are parsed.

orjson is strict where billing needs it: it refuses invalid UTF-8, a byte-order mark,
``NaN``/``Infinity`` and numbers that overflow a double, all of which the standard
library would let through or mangle.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.errors import RecordError

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
    if not value or len(value) > max_bytes:  # one test for the common case, then why
        if value is None:
            raise RecordError("invalid_json", "record has no value (null, e.g. a tombstone)")
        if value:
            raise RecordError(
                "record_too_large",
                f"record value is {len(value)} bytes, over records.max_bytes ({max_bytes})",
            )
        raise RecordError("invalid_json", "record value is empty")
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson's message names the problem and its position, never the content.
        raise RecordError("invalid_json", f"record value is not valid JSON: {exc}") from None
    if type(record) is dict:
        return record
    kind = _JSON_TYPE_NAMES.get(type(record), type(record).__name__)
    raise RecordError("schema_violation", f"record is {kind}, not a JSON object")
