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
import threading
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


class RepeatFilter(logging.Filter):
    """At most one line per signature per ``interval`` seconds, whoever logs it.

    A broker that is down makes librdkafka report a failed connect every few tens of
    milliseconds, forever; a bad record stream repeats one refusal per record. The operator
    needs the first line and a count, not a flood that buries the line that matters.

    The signature is the logger, the level and the message; for warnings and errors the
    parts that vary between repeats of one problem (numbers, Stripe ids) are blanked, so
    "Connect to ... failed (after 3ms)" and "(after 7ms)" are one problem. The next line
    let through after a quiet spell says how many were suppressed; ``report()`` (called
    from the consume loop) says it for problems that have stopped repeating.
    """

    #: Signatures remembered at most (the oldest are reported and forgotten first).
    MAX_SIGNATURES = 10_000

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: signature -> [start of its window, lines suppressed in it, a sample record]
        self._windows: dict[tuple[str, int, str], list[Any]] = {}
        self._next_report = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval <= 0 or getattr(record, "repeat_summary", False):
            return True
        key = _signature(record)
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.interval:
                window[1] += 1
                return False
            suppressed = window[1] if window is not None else 0
            self._windows.pop(key, None)  # re-inserted last: oldest first when pruning
            self._windows[key] = [now, 0, record]
            if len(self._windows) > self.MAX_SIGNATURES:
                del self._windows[next(iter(self._windows))]
        if suppressed:
            record.msg = f"{record.getMessage()} [{suppressed} similar lines suppressed]"
            record.args = None
        return True

    def report(self, *, final: bool = False) -> None:
        """Log how many lines were suppressed for problems whose window has closed (every
        window when ``final``: at shutdown, so no count is lost)."""
        now = self._clock()
        if now < self._next_report and not final:
            return
        self._next_report = now + min(1.0, self.interval)
        due: list[tuple[int, logging.LogRecord]] = []
        with self._lock:
            for key, (start, suppressed, sample) in list(self._windows.items()):
                if final or now - start >= self.interval:
                    del self._windows[key]
                    if suppressed:
                        due.append((suppressed, sample))
        for suppressed, sample in due:
            logging.getLogger(sample.name).log(
                sample.levelno,
                "%d similar lines suppressed in %g s, like: %s",
                suppressed,
                self.interval,
                sample.getMessage(),
                extra={"repeat_summary": True},
            )


#: Parts of a warning that vary between repeats of one problem: numbers and Stripe ids.
_VARYING = re.compile(r"\b[a-z]{2,8}_[A-Za-z0-9]{6,}\b|\d+(?:\.\d+)*")


def _signature(record: logging.LogRecord) -> tuple[str, int, str]:
    message = record.getMessage()
    if record.levelno >= logging.WARNING:
        message = _VARYING.sub("#", message)
    return record.name, record.levelno, message[:500]


_repeats: RepeatFilter | None = None


def report_repeats(*, final: bool = False) -> None:
    """Say how many repeated lines were suppressed (a no-op until ``configure``)."""
    if _repeats is not None:
        _repeats.report(final=final)


def configure(
    level: str = "INFO",
    fmt: str = "text",
    *,
    worker: int | None = None,
    repeat_seconds: float = 30.0,
) -> None:
    """Install one stderr handler on the root logger (idempotent: replaces earlier ones).

    ``repeat_seconds``: at most one line per distinct problem per this many seconds (0: off).
    """
    global _repeats
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    _repeats = RepeatFilter(repeat_seconds)
    handler.addFilter(_repeats)
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
