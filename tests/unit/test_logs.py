"""Log lines: readable or JSON, with record and request context, never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from connector import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _emit(capsys: pytest.CaptureFixture[str], fmt: str, *args: object, **extra: object) -> str:
    logs.configure("INFO", fmt)
    logging.getLogger("meterstream.test").warning(*args, extra=extra)  # type: ignore[arg-type]
    return capsys.readouterr().err.strip()


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_carry_record_context(capsys: pytest.CaptureFixture[str]) -> None:
    line = _emit(
        capsys, "text", "dead-lettered: %s", "invalid_json", topic="usage", partition=3, offset=42
    )
    assert "WARNING meterstream.test dead-lettered: invalid_json" in line
    assert line.endswith("topic=usage partition=3 offset=42")


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    line = _emit(
        capsys, "json", "retrying after HTTP 500", request_id="req_abc123", event_count=100
    )
    entry = json.loads(line)
    assert entry["message"] == "retrying after HTTP 500"
    assert entry["request_id"] == "req_abc123"
    assert entry["event_count"] == 100
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "meterstream.test"


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.usefixtures("restore_logging")
def test_secrets_never_reach_the_output(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    secrets = [
        "sk_live_51Habcdefghijklmnop",
        "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "rk_live_restrictedkey123",
        "mestok_test_AbC-123_xyz",
    ]
    line = _emit(capsys, fmt, "request with %s failed", " and ".join(secrets), reason=secrets[0])
    for secret in secrets:
        assert secret not in line
    assert logs.REDACTED in line


@pytest.mark.usefixtures("restore_logging")
def test_tracebacks_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    try:
        raise RuntimeError("bad key sk_live_51Hsecretsecret")
    except RuntimeError:
        logging.getLogger("meterstream.test").exception("boom")
    output = capsys.readouterr().err
    assert "sk_live_51Hsecretsecret" not in output
    assert "RuntimeError" in output


@pytest.mark.usefixtures("restore_logging")
def test_configure_replaces_handlers_and_sets_the_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "text")
    logs.configure("ERROR", "text")
    logging.getLogger("meterstream.test").warning("hidden")
    logging.getLogger("meterstream.test").error("shown")
    output = capsys.readouterr().err.strip().splitlines()
    assert len(output) == 1
    assert "shown" in output[0]


def _throttled(interval: float, now: list[float]) -> tuple[logs.RepeatFilter, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.levelname} {record.getMessage()}")

    repeats = logs.RepeatFilter(interval, clock=lambda: now[0])
    handler = Collect()
    handler.addFilter(repeats)
    logger = logging.getLogger("meterstream.test.repeats")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return repeats, lines


def test_repeated_problems_get_one_line_per_interval_and_a_count() -> None:
    now = [0.0]
    _repeats, lines = _throttled(30, now)
    log = logging.getLogger("meterstream.test.repeats")
    for ms in range(50):  # librdkafka's flood: the same failure, different numbers
        now[0] += 0.05
        log.error("Connect to ipv4#127.0.0.1:9092 failed (after %dms in state CONNECT)", ms)
    log.error("Receive failed: Disconnected")  # another problem: its own line
    assert len(lines) == 2
    now[0] += 30
    log.error("Connect to ipv4#127.0.0.1:9092 failed (after 3ms in state CONNECT)")
    assert len(lines) == 3
    assert lines[2].endswith("[49 similar lines suppressed]")


def test_a_problem_that_stopped_repeating_is_reported_with_its_count() -> None:
    now = [0.0]
    repeats, lines = _throttled(30, now)
    log = logging.getLogger("meterstream.test.repeats")
    for _ in range(4):
        log.warning("Stripe unavailable: HTTP 503 (req_AbC123xyz)")
    repeats.report()
    assert len(lines) == 1, "still inside its window"
    now[0] += 31
    repeats.report()
    assert len(lines) == 2
    assert lines[1].startswith("WARNING 3 similar lines suppressed in 30 s, like: Stripe")


def test_info_lines_repeat_only_when_identical_and_zero_turns_it_off() -> None:
    now = [0.0]
    _repeats, lines = _throttled(30, now)
    log = logging.getLogger("meterstream.test.repeats")
    log.info("assigned usage-0")
    log.info("assigned usage-1")  # numbers matter below warnings: two lines
    log.info("assigned usage-1")
    assert lines == ["INFO assigned usage-0", "INFO assigned usage-1"]
    _off, unthrottled = _throttled(0, now)
    for _ in range(3):
        log.error("same")
    assert len(unthrottled) == 3
