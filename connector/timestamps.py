"""Event times: parse what producers send, write what Stripe expects, know Stripe's window.

Accepted on input (``parse_timestamp``):

- RFC 3339 date-times, ``2024-06-01T12:00:00Z``, any fraction of a second (truncated to
  microseconds), any offset (``+05:45``, ``-00:00``), ``T``/``Z`` in either case. Strict:
  no date-only, no missing offset (a naive time would be guessed, and a guess bills the
  wrong hour), no ISO 8601 basic format, no leap second ``:60``.
- Epoch seconds or milliseconds, as int/float or a numeric string (``"1717243200"``,
  ``"1717243200.5"``); a magnitude of ``1e11`` or more means milliseconds (``1e11`` s is
  the year 5138, ``1e11`` ms is 1973: every plausible usage time falls clearly on one side).

Written on the wire (``format_rfc3339_ms``): ``2024-06-01T12:00:00.000Z``, UTC, milliseconds.
"""

from __future__ import annotations

import math
import time
from datetime import datetime

#: Stripe refuses (asynchronously) events older than 35 days at receipt.
STRIPE_MAX_AGE_SECONDS = 35 * 86400
#: Stripe refuses (asynchronously) events more than 5 minutes in the future.
STRIPE_MAX_FUTURE_SECONDS = 300
#: Epoch magnitudes at or above this are milliseconds (1e11 s = year 5138, 1e11 ms = 1973).
MILLISECONDS_THRESHOLD = 1e11

_DIGITS = frozenset("0123456789")
#: "YYYY-MM-DDTHH:MM:SS": shorter cannot be a date-time; the offset is checked after it.
_MIN_RFC3339_LENGTH = 19


def parse_timestamp(value: object) -> float:
    """Epoch seconds for an RFC 3339 string or epoch seconds/milliseconds; else ValueError."""
    if isinstance(value, str):
        # '-' at index 4 is a date (YYYY-); a numeric string never has it there.
        if value[4:5] == "-":
            return _parse_rfc3339(value)
        if _is_numeric(value):
            return _from_epoch_number(float(value))
        raise ValueError("neither an RFC 3339 date-time nor epoch seconds/milliseconds")
    if isinstance(value, bool):  # bool is an int subclass; True is not a time
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, int | float):
        return _from_epoch_number(value)
    raise ValueError(f"a {type(value).__name__} is not a timestamp")


def format_rfc3339_ms(epoch_seconds: float) -> str:
    """``2024-06-01T12:00:00.000Z``: UTC, rounded to the nearest millisecond.

    Meant for times inside Stripe's window; ValueError for times the platform cannot
    represent.
    """
    if not math.isfinite(epoch_seconds):
        raise ValueError("epoch seconds must be finite")
    seconds, millis = divmod(round(epoch_seconds * 1000), 1000)
    prefix = _prefixes.get(seconds)
    if prefix is None:
        prefix = _second_prefix(seconds)
    return f"{prefix}.{millis:03d}Z"


def expiry_cutoff(now: float, margin_seconds: float) -> str:
    """The oldest wire timestamp Stripe still takes at ``now``, ``margin_seconds`` early.

    Wire timestamps (``format_rfc3339_ms``) are fixed width, so comparing the text compares
    the times: an event is expired when ``event["timestamp"] < expiry_cutoff(...)``.
    """
    return format_rfc3339_ms(now - STRIPE_MAX_AGE_SECONDS + margin_seconds)


def _second_prefix(seconds: int) -> str:
    # Usage times repeat the same few thousand seconds (a backlog of an hour, records of
    # many partitions interleaved): a remembered second saves a gmtime and a format, about
    # a microsecond. Dict reads and writes are atomic, so concurrent callers stay correct.
    try:
        t = time.gmtime(seconds)
    except (OverflowError, OSError) as exc:
        raise ValueError(f"epoch {seconds} s is outside the representable range") from exc
    prefix = (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )
    if len(_prefixes) >= _PREFIX_CACHE_LIMIT:
        _prefixes.clear()
    _prefixes[seconds] = prefix
    return prefix


#: Whole seconds already written as ``YYYY-MM-DDTHH:MM:SS``; cleared beyond the limit, so a
#: backlog spanning weeks costs a format per new second, never memory (about 1 MB).
_PREFIX_CACHE_LIMIT = 10_000
_prefixes: dict[int, str] = {}


def is_canonical(value: str) -> bool:
    """True when ``value`` already has the wire shape ``YYYY-MM-DDTHH:MM:SS.mmmZ``.

    Only meaningful for a string that ``parse_timestamp`` accepted: then it is exactly
    ``format_rfc3339_ms(parse_timestamp(value))`` and can be sent unchanged.
    """
    return len(value) == 24 and value[23] == "Z" and value[19] == "." and value[10] == "T"


def _from_epoch_number(number: float) -> float:
    try:
        seconds = float(number)
    except OverflowError:  # an int too large for a float
        raise ValueError("epoch number out of range") from None
    if not math.isfinite(seconds):
        raise ValueError("epoch number is not finite")
    if abs(seconds) >= MILLISECONDS_THRESHOLD:
        seconds /= 1000.0
    return seconds


def wire_epoch(text: str) -> float | None:
    """Epoch seconds of a string already in the wire shape, else None (take the general path).

    For text the connector wrote itself (an event's timestamp, e.g. its aggregation
    bucket): the same ``fromisoformat`` as ``parse_timestamp`` without its general
    checks. None, never a guess, for anything else or for an invalid time (month 13).
    """
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


def _is_numeric(text: str) -> bool:
    """``-?digits(.digits)?``, ASCII only (``float`` would also take "1e9", "inf", "١٢")."""
    body = text[1:] if text[:1] == "-" else text
    whole, dot, fraction = body.partition(".")
    if not whole or not whole.isascii() or not whole.isdigit():
        return False
    return not dot or (fraction.isascii() and fraction.isdigit())


def _parse_rfc3339(text: str) -> float:
    # Check the RFC 3339 shape here; datetime.fromisoformat (C, ASCII digits only) checks
    # the digits and ranges (month 13, Feb 30, hour 24, offset over a day) but on its own
    # would also take ISO 8601 forms RFC 3339 does not allow ("2024-06-01", "12:00:00 Z").
    n = len(text)
    if n == 24 and text[23] == "Z" and text[19] == "." and _has_date_time_separators(text):
        return datetime.fromisoformat(text).timestamp()  # the wire shape: the common case
    if (
        n < _MIN_RFC3339_LENGTH
        or text[4] != "-"
        or text[7] != "-"
        or text[13] != ":"
        or text[16] != ":"
        or text[10] not in "Tt"
    ):
        raise ValueError("not an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM))")
    last = text[-1]
    if last in {"Z", "z"}:
        end = n - 1
    elif n >= 25 and text[-3] == ":" and text[-6] in "+-" and text[-2] in "012345":
        end = n - 6
    else:
        raise ValueError("RFC 3339 date-time needs an offset: Z or +HH:MM/-HH:MM")
    if end != 19:
        fraction = text[19:end]
        if (
            len(fraction) < 2
            or fraction[0] != "."
            # fromisoformat reads 6 digits and ignores what follows: check those here.
            or (len(fraction) > 7 and not _DIGITS.issuperset(fraction[7:]))
        ):
            raise ValueError("RFC 3339 fraction of a second must be '.' and digits")
        if len(fraction) > 7:
            text = text[:26] + text[end:]
    if text[10] != "T" or last == "z":
        text = text[:10] + "T" + text[11:-1] + ("Z" if last == "z" else last)
    return datetime.fromisoformat(text).timestamp()


def _has_date_time_separators(text: str) -> bool:
    return (
        text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
        and text[13] == ":"
        and text[16] == ":"
    )
