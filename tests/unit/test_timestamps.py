"""parse_timestamp / format_rfc3339_ms: what producers send, what Stripe gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.timestamps import format_rfc3339_ms, is_canonical, parse_timestamp

NOON = 1_717_243_200.0  # 2024-06-01T12:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-06-01T12:00:00Z", NOON),
        ("2024-06-01T12:00:00.000Z", NOON),
        ("2024-06-01t12:00:00z", NOON),  # RFC 3339 allows lower case T and Z
        ("2024-06-01T12:00:00.5Z", NOON + 0.5),
        ("2024-06-01T12:00:00.123456Z", NOON + 0.123456),
        ("2024-06-01T12:00:00.123456789Z", NOON + 0.123456),  # nanoseconds truncated
        ("2024-06-01T12:00:00+00:00", NOON),
        ("2024-06-01T12:00:00-00:00", NOON),  # "UTC, local offset unknown"
        ("2024-06-01T17:45:00+05:45", NOON),  # Nepal
        ("2024-06-01T04:00:00-08:00", NOON),
        ("2024-06-02T01:45:00.250+13:45", NOON + 0.25),  # Chatham Islands daylight time
        ("2024-06-01T02:30:00-09:30", NOON),  # Marquesas
        ("0001-01-01T00:00:00+05:00", -62_135_614_800.0),  # year 0 in UTC: the window refuses it
    ],
)
def test_rfc3339_with_any_offset(text: str, expected: float) -> None:
    assert parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_717_243_200, NOON),
        (1_717_243_200.5, NOON + 0.5),
        (1_717_243_200_000, NOON),  # milliseconds
        (1_717_243_200_500.0, NOON + 0.5),
        ("1717243200", NOON),
        ("1717243200.25", NOON + 0.25),
        ("1717243200000", NOON),
        (0, 0.0),
        ("-86400", -86400.0),
        (99_999_999_999, 99_999_999_999.0),  # just under the threshold: seconds
        (100_000_000_000, 100_000_000.0),  # at the threshold: milliseconds
    ],
)
def test_epoch_seconds_and_milliseconds(value: object, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "2024-06-01",  # date only
        "2024-06-01T12:00:00",  # no offset: which hour would it bill?
        "2024-06-01T12:00Z",  # no seconds
        "2024-06-01 12:00:00Z",  # space instead of T
        "20240601T120000Z",  # ISO 8601 basic format
        "2024-06-01T12:00:00 Z",
        "2024-06-01T12:00:00.Z",
        "2024-06-01T12:00:00,5Z",
        "2024-06-01T12:00:00.1234567x9Z",
        "2024-06-01T12:00:00+0545",
        "2024-06-01T12:00:00+05:60",
        "2024-06-01T12:00:00+24:00",
        "2024-06-01T12:00:00+05:45:30",
        "2024-06-01T23:59:60Z",  # leap second
        "2024-13-01T12:00:00Z",
        "2024-02-30T12:00:00Z",
        "2024-06-01T24:00:00Z",
        "\uff12024-06-01T12:00:00Z",  # a full-width digit
        "",
        "now",
        "1e9",
        "inf",
        "NaN",
        "١٧١٧٢٤٣٢٠٠",  # Arabic-Indic digits
        "+1717243200",
        " 1717243200",
        "1717243200.",
        "1" * 400,  # a float overflows to infinity
        True,
        None,
        [],
        {},
        float("nan"),
        float("inf"),
        10**400,
    ],
)
def test_everything_else_is_a_value_error(value: object) -> None:
    with pytest.raises(ValueError):
        parse_timestamp(value)


@pytest.mark.parametrize(
    ("epoch", "text"),
    [
        (NOON, "2024-06-01T12:00:00.000Z"),
        (NOON + 0.123, "2024-06-01T12:00:00.123Z"),
        (NOON + 0.9996, "2024-06-01T12:00:01.000Z"),  # rounds into the next second
        (NOON - 0.0004, "2024-06-01T12:00:00.000Z"),
        (-0.5, "1969-12-31T23:59:59.500Z"),
        (0, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_format_is_utc_with_milliseconds(epoch: float, text: str) -> None:
    assert format_rfc3339_ms(epoch) == text
    assert is_canonical(text)


def test_format_refuses_what_cannot_be_a_time() -> None:
    for bad in (float("nan"), float("inf"), 1e20):
        with pytest.raises(ValueError):
            format_rfc3339_ms(bad)


_MS_2000_TO_2100 = st.integers(946_684_800_000, 4_102_444_800_000)


@settings(max_examples=300, deadline=None)
@given(st.lists(_MS_2000_TO_2100, min_size=1, max_size=20))
def test_format_matches_datetime_and_round_trips(millis: list[int]) -> None:
    # A list, so the cache of formatted seconds is exercised by hits and misses alike.
    for ms in millis:
        text = format_rfc3339_ms(ms / 1000)
        reference = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        assert text == reference.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
        assert round(parse_timestamp(text) * 1000) == ms
        assert format_rfc3339_ms(parse_timestamp(text)) == text


def test_the_cache_of_formatted_seconds_is_bounded_and_stays_right() -> None:
    from connector import timestamps

    start = 1_780_000_000
    limit = timestamps._PREFIX_CACHE_LIMIT
    for seconds in range(start, start + limit + 10):
        assert len(timestamps._prefixes) <= limit
        text = format_rfc3339_ms(seconds + 0.25)
        assert text == datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.250Z")
    # Cleared once full: the seconds before the clearing are formatted again, the same.
    assert len(timestamps._prefixes) < limit
    assert format_rfc3339_ms(start + 0.001) == "2026-05-28T20:26:40.001Z"


@settings(max_examples=200, deadline=None)
@given(_MS_2000_TO_2100, st.integers(-23 * 60 - 59, 23 * 60 + 59))
def test_any_offset_names_the_same_instant(ms: int, offset_minutes: int) -> None:
    instant = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    local = instant + timedelta(minutes=offset_minutes)
    text = local.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + f"{sign}{hours:02d}:{minutes:02d}"
    assert round(parse_timestamp(text) * 1000) == ms
