"""Logging: readable lines for people, JSON lines for log pipelines, never a secret.

Context travels in ``extra=``: a line about a record carries ``topic``, ``partition`` and
``offset``; a line about a request carries Stripe's ``request_id``. Both formats print
those fields. A filter on the root handler scrubs anything shaped like a Stripe key or a
session token from every message and field, whoever logged it (httpx included).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

#: Fields that give a line its context, in the order the text format prints them.
CONTEXT_FIELDS = (
    "worker",
    "topic",
    "partition",
    "offset",
    "request_id",
    "event_count",
    "reason",
)
#: Stripe secret and restricted keys, and meter event session tokens (any mode).
SECRET_PATTERN = re.compile(r"\b(?:sk|rk|mestok|ek)_(?:test|live)_[A-Za-z0-9_\-]+")
REDACTED = "[REDACTED]"
#: Libraries that are chatty at INFO (a line per HTTP request).
_QUIET_LOGGERS = ("httpx", "httpcore")


def redact(text: str) -> str:
    """``text`` with every key or token replaced by a marker."""
    return SECRET_PATTERN.sub(REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites the record's message and string extras so no secret reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if isinstance(value, str):
                setattr(record, field, redact(value))
        return True


class TextFormatter(logging.Formatter):
    """``2026-11-25T03:00:00.123Z INFO  meterstream.worker message  topic=usage partition=3``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = (
            f"{stamp}.{int(record.msecs):03d}Z {record.levelname:<5} {record.name} "
            f"{record.getMessage()}"
        )
        context = " ".join(
            f"{field}={getattr(record, field)}"
            for field in CONTEXT_FIELDS
            if getattr(record, field, None) is not None
        )
        if context:
            line = f"{line}  {context}"
        if record.exc_info:
            line = f"{line}\n{redact(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message`` and context."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class WorkerIndex(logging.Filter):
    """Stamps ``worker=N`` on every line of a worker process (``--workers N``)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "worker", None) is None:
            record.worker = self.index
        return True


class Throttle:
    """Says whether a recurring message may be logged now: once per ``interval`` per key.

    A broker that is down makes librdkafka report a failed connect every few tens of
    milliseconds; the operator needs the first line and a count, not a flood.
    """

    def __init__(self, interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self._clock = clock
        self._last: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def allow(self, key: object) -> int | None:
        """None to stay quiet; else how many were suppressed since the last line (0+)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._suppressed.pop(key, 0)


def configure(level: str = "INFO", fmt: str = "text", *, worker: int | None = None) -> None:
    """Install one stderr handler on the root logger (idempotent: replaces earlier ones)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactSecrets())
    if worker is not None:
        handler.addFilter(WorkerIndex(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
